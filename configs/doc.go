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
//	  - tcp: 0.0.0.0:10810
//	    allow: [10.0.0.0/8, "::1"]   # optional, tcp only: other addresses
//	                             # are closed at accept
//	metrics:
//	  address: 127.0.0.1:9810    # default; "off", "" or empty: no metrics
//	control: /run/stackd/control.sock  # optional; default none ("off",
//	                             # "" or empty: none). The control socket
//	                             # of stackd status, leg and fault: HTTP
//	                             # and JSON on a unix socket of mode 0600;
//	                             # at most 107 bytes, not a listen path
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
//	tls:                         # optional: NBD_OPT_STARTTLS
//	  cert: /etc/stackd/tls/server-cert.pem  # required; relative paths
//	  key: /etc/stackd/tls/server-key.pem    # are the file's directory's;
//	                             # a key others can read is a warning
//	  client_ca: /etc/stackd/tls/ca-cert.pem # optional: clients must
//	                             # present a certificate it signed
//	  mode: optional             # off | optional (default: clients may
//	                             # STARTTLS) | required (every option but
//	                             # STARTTLS and ABORT needs TLS)
//	exports:                     # at least one
//	  - name: default            # required, unique, 1 to 4096 bytes
//	    description: "striped RAM disk"   # optional, at most 4096 bytes
//	    default: true            # optional; the export a client gets by
//	                             # asking for the empty name; at most one.
//	                             # A lone export without this key is the
//	                             # default.
//	    read_only: false         # optional; writes, trims, zeroes get EPERM
//	    tls: required            # optional: this export only over TLS
//	    allow:                   # optional: who may open it; default all
//	      - cidr: 10.1.0.0/16    # TCP source address
//	      - unix_uid: 0          # unix socket peer (SO_PEERCRED); unix_gid too
//	      - client_cert: {dns: host1.example}  # or cn:, or spki_sha256:
//	                             # (needs tls.client_ca)
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
//	split:
//	  max_bytes: 1MiB
//	  leg: {memory: {size: 1GiB}}
//
// Each kind is described in one file of package stack, by its settings
// struct (stack.SplitConfig for split, stack.FileConfig for file, …),
// whose field comments are the reference for the kind's keys and the
// rules its values follow; the README's table lists the kinds. The
// fault layers, error and flakey (stack.ErrorConfig, stack.FlakeyConfig),
// fail or drop requests on purpose, to test what a client makes of a
// failing disk. Every layer that allocates requests of its own (split,
// stripe, linear) takes an optional pool:
//
//	pool: {capacity: 1024, rescuer: true}
//
// capacity is the number of requests (bios) the layer's pool holds, 1 to
// 1048576 (default 1024); rescuer (default true) turns the layer's rescuer
// on or off. Turn it off only to demonstrate the deadlock it prevents.
// All leaf sizes are positive multiples of 512.
//
// # Bounds
//
// A configuration is refused if it expands, through its aliases, to more
// than MaxYAMLNodes YAML nodes, if its stacks have more than MaxStackNodes
// nodes in all, or if a stack is deeper than MaxStackDepth nodes.
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
// Parse is pure: it decodes and checks the configuration itself, and
// looks at no file. Config.CheckHost then checks what the configuration
// needs of the host (files exist or can be created, can be opened as
// their exports need, and are large enough); `stackd check` and `stackd
// serve` both run the two. Both report every problem they find, each as
// "FILE:LINE: reason", the
// line being the offending value's, or for a missing key the first line
// of the mapping that lacks it. Unknown keys are errors at every level, so
// a misspelt key is never silently ignored.
package configs
