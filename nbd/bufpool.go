package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers come from pools of power-of-two size classes, from
// minBufShift to maxBufShift, so that a steady workload reuses the same few
// buffers instead of allocating one per request. A request is charged to
// the payload budget for its whole class, which is the memory it pins.
const (
	minBufShift = 12 // 4 KiB: smaller requests share this class
	maxBufShift = 25 // 32 MiB: MaxPayload
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

// bufClass returns the size class that holds n bytes (0 < n <= MaxPayload).
func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// classSize is the number of bytes a class's buffers hold.
func classSize(class int) int64 { return 1 << (class + minBufShift) }

// getBuf returns a buffer of class bufClass(n). The pointer is what goes
// back to putBuf, so that pooling it does not allocate a slice header.
// The contents are whatever the last user left: the READ path relies on
// the device filling all of buf[:n] before it reports success, and never
// sends the buffer after an error.
func getBuf(n int) *[]byte {
	c := bufClass(n)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, classSize(c))
	return &b
}

func putBuf(p *[]byte) {
	c := bufClass(cap(*p))
	if classSize(c) != int64(cap(*p)) {
		panic("nbd: foreign buffer returned to the payload pool")
	}
	*p = (*p)[:cap(*p)]
	bufPools[c].Put(p)
}
