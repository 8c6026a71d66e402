package bioset

// A WRITE normally costs two copies of every byte in user space on top of
// the kernel's: the protocol layer reads the payload into a buffer, and the
// leaf copies the buffer into its own memory. For a leaf that is memory,
// reached through layers that only move ranges about, the buffer is a
// detour: the payload could be read straight into the leaf. This is the
// userspace form of the kernel's DAX (dax_direct_access): a device whose
// bytes are memory exposes them, the address-only device-mapper targets
// (dm-linear, dm-stripe) pass that through, and every other target does
// not, so a stack offers it only when its whole path does. See
// docs/DESIGN.md, "Direct writes".

// Direct is a device's memory, for WRITEs made in place instead of through
// bios. WriteDirect behaves as a successful WRITE of the same bytes would:
// it fails only when fill does, and once it returns the bytes are what a
// later READ finds. It may run on many goroutines at once, for overlapping
// ranges too (NBD leaves overlapping requests in flight unordered).
type Direct interface {
	// WriteDirect writes length bytes at device offset off. The first
	// len(head) of them (at most length) are copied from head under the
	// device's own locks, as the bio path would copy them; fill writes
	// the rest in place: it is called with the device's memory for them,
	// piece after piece in increasing offset, and WriteDirect stops at
	// its first error and returns it.
	//
	// No lock is held during fill: it is meant for the kernel to fill
	// (a read from a socket), which may wait for the network. A
	// concurrent READ of the same bytes may therefore see part of the
	// write, which NBD allows for overlapping requests in flight
	// together; a concurrent TRIM may free a piece while fill writes it,
	// which then reads as if the TRIM came second.
	//
	// fill may keep a piece and write it later, until the caller
	// completes the write: the NBD server gathers pieces to read them in
	// one readv. The device must therefore hand out memory that stays
	// its own (or at least alive) meanwhile, and nothing it does after
	// fill returns may depend on the piece's bytes.
	WriteDirect(off, length uint64, head []byte, fill func(dst []byte) error) error
}

// DirectAccess is implemented by a device that may offer Direct.
type DirectAccess interface {
	// Direct returns the device's direct access, or nil when it, or
	// anything below it, has none.
	Direct() Direct
}

// DirectOf returns q's direct access, or nil.
func DirectOf(q Queue) Direct {
	if d, ok := q.(DirectAccess); ok {
		return d.Direct()
	}
	return nil
}
