// Package configs reads, validates and describes stackd's YAML
// configuration, and embeds the default one (default.yaml, a 1 GiB RAM
// disk). A configuration names where to listen, where to serve metrics,
// resource limits, and the exports, each served by a stack of layers over
// leaf targets decoded into a [stack.Spec].
//
// # Reference
//
//	listen:                      # optional; default: - tcp: 127.0.0.1:10809
//	  - tcp: 127.0.0.1:10809     # host:port, numeric port; ":10809" is every
//	                             # interface; quote IPv6: "[::1]:10809"
//	  - unix: /run/stackd/nbd.sock   # socket path, at most 107 bytes
//	metrics:
//	  address: 127.0.0.1:9810    # default; "off", "" or empty: no metrics
//	limits:                      # each optional; absent or 0: the default
//	  max_connections: 1024      # open connections; more are refused
//	  max_connections_per_client: 64  # open connections from one IP
//	                             # address (TCP) or peer uid (unix); 1 to
//	                             # max_connections; default a quarter of
//	                             # max_connections, 4 to 64
//	  max_in_flight: 256         # requests per connection; at least 128
//	  payload_budget: 256MiB     # payload bytes held by all connections
//	                             # together; at least 32MiB
//	  connection_payload: 64MiB  # payload bytes held by one connection;
//	                             # 32MiB to payload_budget; default a
//	                             # quarter of payload_budget, at least 32MiB
//	  handshake_timeout: 10s     # time to finish the NBD handshake
//	  reply_timeout: 1m          # time to write one reply; a client that
//	                             # does not take it is dropped; at least 2s
//	exports:                     # at least one
//	  - name: default            # required, unique, 1 to 4096 bytes
//	    description: "striped RAM disk"   # optional, at most 4096 bytes
//	    default: true            # optional; the export a client gets by
//	                             # asking for the empty name; at most one.
//	                             # A lone export without this key is the
//	                             # default.
//	    read_only: false         # optional; writes, trims, zeroes get EPERM
//	    stack:                   # required: a stack node
//	      split:
//	        max_bytes: 1MiB
//	        leg:
//	          stripe:
//	            chunk: 64KiB
//	            legs:
//	              - memory: {size: 256MiB}
//	              - memory: {size: 256MiB}
//
// A stack node is a mapping with exactly one key, its kind; the value
// holds the kind's settings:
//
//	split:  {max_bytes, boundary, pool, leg}
//	    Cuts reads and writes into pieces of at most max_bytes (required,
//	    at least 512, a multiple of 512) that do not cross a multiple of
//	    boundary (optional; 0, the default, for none; else a multiple of
//	    512). Trims, zeroes and cache requests carry no payload and are cut
//	    at boundary only; block status passes whole. leg is exactly one
//	    stack node.
//	stripe: {chunk, pool, legs}
//	    RAID0: chunk (required, a multiple of 512) bytes to each leg in
//	    turn. legs is a list of at least 2 stack nodes of the same size,
//	    each at least one chunk. Its size is the number of legs times the
//	    leg size rounded down to a multiple of chunk.
//	linear: {pool, legs}
//	    legs (a list of at least 1 stack node, of any sizes) end to end;
//	    its size is their sum.
//	memory: {size, chunk, delay}
//	    RAM, allocated as it is written. size is required. chunk, the
//	    allocation unit, is optional: a power of two, at least 4KiB.
//	null:   {size, delay}
//	    Discards writes and reads zeroes. size is required.
//	file:   {path, size, delay}
//	    A regular file or block device. path is required; a relative path
//	    is relative to the configuration file's directory. An existing
//	    file must be readable, writable unless the export is read_only,
//	    and at least size bytes (size may be left out: the file's size).
//	    A missing file is created at size (then required) when stackd
//	    starts; its directory must exist and be writable, and the export
//	    must not be read_only. A file may back only one leg in the whole
//	    configuration.
//
// Every layer (split, stripe, linear) takes an optional pool:
//
//	pool: {capacity: 1024, rescuer: true}
//
// capacity is the number of requests (bios) the layer's pool holds, 1 to
// 1048576 (default 1024); rescuer (default true) turns the layer's rescuer
// on or off. Turn it off only to demonstrate the deadlock it prevents.
//
// delay (leaves only) adds latency to each request, to model a slow leg.
// All leaf sizes are positive multiples of 512.
//
// # Values
//
// Sizes are a whole number of bytes, as a YAML integer (1048576) or a
// string with a binary unit, with or without a space: B, KiB, MiB, GiB,
// TiB, or the short forms K, M, G, T (the same powers of 1024). Units are
// case-sensitive. Decimal units (KB, MB, GB, TB) are rejected, because
// readers disagree on what they mean: write 1MiB, or 1000000. Fractions
// are rejected: write 1536MiB, not 1.5GiB.
//
// Durations use Go's syntax (time.ParseDuration): 10s, 1ms, 250us, 1m30s.
//
// Strings must be YAML strings: quote a name that YAML would read as a
// number or a boolean (name: "2024"). Anchors and aliases work (&leg,
// *leg); merge keys (<<) do not.
//
// # Errors
//
// Parse reports every problem it finds, each as "FILE:LINE: reason", the
// line being the offending value's, or for a missing key the first line
// of the mapping that lacks it. Unknown keys are errors at every level, so
// a misspelt key is never silently ignored.
package configs
