package remote

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/stackd/stackd/internal/intrusive"
	"github.com/stackd/stackd/nbd/client"
)

// conn is one connection slot of a Remote: the client now connected, if
// any, the requests waiting to be sent on it, and those in flight.
//
// Invariant, under mu: every request of this slot is on exactly one of
// queue and inflight. Submit and a retry push onto queue; the sender
// moves a request to inflight before it hands it to the client; Done
// takes it off inflight; the watchdog takes expired ones off queue. So a
// request is never lost between two lists, nor ended twice.
type conn struct {
	r  *Remote
	id int

	mu       sync.Mutex
	queue    reqList
	inflight reqList
	started  int            // requests of inflight handed to the client: at most maxInFlight
	cl       *client.Client // nil while disconnected
	// idle: the sender found nothing it could send and waits for a
	// wake-up. Whoever gives it something to do (a request queued, a slot
	// freed while requests wait) clears it and wakes the sender; while it
	// is clear, the sender is running and will see the change itself, so
	// no goroutine is woken per request under load.
	idle bool

	wake       chan struct{} // one pending wake-up for the sender
	state      atomic.Int32
	reconnects atomic.Uint64
	lastErr    atomic.Pointer[string] // why the last dial failed or the connection dropped
	// logged is the last failure logged, "" once connected; only the
	// slot's dialler (or New, before it starts) touches it.
	logged string
}

// failed records why a dial failed or the connection dropped, and logs
// it when it is news: the first failure since the slot was connected, or
// one unlike the last logged. A remote down for hours, or one whose
// certificate does not verify, is then a line in the log rather than a
// line per backoff.
func (c *conn) failed(err error) {
	s := errString(err)
	c.lastErr.Store(s)
	if *s == c.logged {
		return
	}
	msg := "nbd leg cannot connect"
	if c.logged == "" && c.state.Load() == connStateConnected {
		msg = "nbd leg lost its connection"
	}
	c.logged = *s
	c.r.o.Log.Warn(msg, "uri", c.r.o.Target(), "conn", c.id, "err", err)
}

// connected logs a connection made after a failure was logged.
func (c *conn) connected() {
	if c.logged != "" {
		c.r.o.Log.Info("nbd leg connected", "uri", c.r.o.Target(), "conn", c.id)
		c.logged = ""
	}
}

// signal wakes the sender without blocking: one pending wake-up is
// enough, since the sender looks at everything when it wakes.
func (c *conn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// enqueue puts q at the back of the queue. It never blocks: the queue is
// a list through the requests, as long as the bios above allow.
func (c *conn) enqueue(q *req) {
	q.conn = c
	c.mu.Lock()
	c.queue.PushBack(q, &q.link)
	wake := c.wakeLocked()
	c.mu.Unlock()
	if wake {
		c.signal()
	}
}

// wakeLocked reports whether the sender must be woken, now that it may
// have something to send: it is idle and requests are queued. Under c.mu.
func (c *conn) wakeLocked() bool {
	if !c.idle || c.queue.Empty() {
		return false
	}
	c.idle = false
	return true
}

// releaseSlot gives back q's sending slot. Under c.mu.
func (c *conn) releaseSlot(q *req) {
	if q.started {
		q.started = false
		c.started--
	}
}

// start runs the slot's goroutines: the dialler, which keeps it
// connected, and the sender. cl is a client already dialled, or nil.
func (r *Remote) start(c *conn, cl *client.Client) {
	c.state.Store(connStateConnecting)
	r.wg.Add(2)
	go c.keepConnected(cl)
	go c.send()
}

// keepConnected dials, serves until the connection breaks, and dials
// again, with backoff between failed dials, until Close.
func (c *conn) keepConnected(cl *client.Client) {
	defer c.r.wg.Done()
	r := c.r
	backoff := backoffMin
	for first := true; ; first = false {
		if cl == nil {
			var err error
			c.state.Store(connStateConnecting)
			if cl, err = r.dial(); err != nil {
				c.failed(err)
				c.state.Store(connStateBackoff)
				if !c.sleep(backoff) {
					return
				}
				backoff = min(backoff*2, backoffMax)
				continue
			}
			if !first {
				r.reconnects.Add(1)
				c.reconnects.Add(1)
			}
			r.learnMulti(cl)
		}
		backoff = backoffMin
		c.connected()
		c.mu.Lock()
		c.cl = cl
		c.mu.Unlock()
		c.state.Store(connStateConnected)
		c.signal()
		select {
		case <-cl.Broken():
		case <-r.stop:
			c.mu.Lock()
			busy := c.started > 0
			c.mu.Unlock()
			if busy {
				// The sender may be blocked writing to a remote that
				// stopped reading: break the socket rather than queue a
				// NBD_CMD_DISC behind it, with a reset, so that what
				// is unsent is not performed after we are gone.
				cl.Reset(errClosing)
			}
			cl.Close()
			c.drop()
			return
		}
		// Every request in flight on cl has been through Done by now
		// (Broken closes after the reader completed them all): they are
		// back on the queue or ended.
		c.drop()
		c.failed(cl.Err())
		cl.Close()
		cl = nil
		c.state.Store(connStateBackoff)
		if !c.sleep(backoffMin) {
			return
		}
	}
}

// drop forgets the client, so that the sender waits for the next.
func (c *conn) drop() {
	c.mu.Lock()
	c.cl = nil
	c.mu.Unlock()
}

// sleep waits for d or Close, and reports whether it was d.
func (c *conn) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.r.stop:
		return false
	}
}

// send is the slot's sender: it hands queued requests to the client, up
// to maxInFlight at once, in the order they were queued, up to maxBatch
// of them in one writev. The network writes happen here, never in
// Submit.
func (c *conn) send() {
	defer c.r.wg.Done()
	r := c.r
	var batch [maxBatch]*req
	var reqs [maxBatch]*client.Request
	for {
		select {
		case <-c.wake:
		case <-r.stop:
			return
		}
		for {
			c.mu.Lock()
			cl := c.cl
			n := 0
			for cl != nil && c.started < maxInFlight && !c.queue.Empty() && n < maxBatch {
				q := c.queue.PopFront()
				c.inflight.PushBack(q, &q.link)
				q.started = true
				c.started++
				batch[n] = q
				n++
			}
			c.idle = n == 0
			c.mu.Unlock()
			if n == 0 {
				break
			}
			m := 0
			for _, q := range batch[:n] {
				if skip, err := q.fill(cl.Flags(), cl.HasMetaContext()); skip {
					c.mu.Lock()
					c.inflight.Remove(&q.link)
					c.releaseSlot(q)
					c.mu.Unlock()
					r.finish(q, err)
					continue
				}
				q.sent = time.Now()
				reqs[m] = &q.Request
				batch[m] = q
				m++
			}
			if m == 0 {
				continue
			}
			if err := cl.StartBatch(reqs[:m]); err != nil {
				// Not sent, and Done will not run: back to the front of
				// the queue, in their order, for the next connection.
				c.mu.Lock()
				for k := m - 1; k >= 0; k-- {
					q := batch[k]
					c.inflight.Remove(&q.link)
					c.releaseSlot(q)
					c.queue.PushFront(q, &q.link)
				}
				c.mu.Unlock()
				clear(reqs[:m])
				break
			}
			clear(reqs[:m])
		}
	}
}

// watch fails what has waited past its deadline on the slot: a queued
// request ends with EIO here; a request in flight too long aborts the
// connection, whose Done then ends it with EIO and retries the others.
func (c *conn) watch(now time.Time) {
	c.mu.Lock()
	var expired reqList
	for q := c.queue.Front(); q != nil; {
		next := q.link.Next()
		if now.After(q.deadline) {
			c.queue.Remove(&q.link)
			expired.PushBack(q, &q.link)
		}
		q = next
	}
	var abort *client.Client
	for q := c.inflight.Front(); q != nil; q = q.link.Next() {
		if q.started && now.After(q.deadline) {
			abort = c.cl
			break
		}
	}
	c.mu.Unlock()
	for q := expired.PopFront(); q != nil; q = expired.PopFront() {
		c.r.finish(q, errTimedOut)
	}
	if abort != nil {
		// A reset, not a close: see "Fencing" in the package comment.
		abort.Reset(errTimedOut)
	}
}

// watchdog runs watch on every slot, often enough that a request fails
// within a tenth of its timeout (at least every second) after it expires.
func (r *Remote) watchdog() {
	defer r.wg.Done()
	tick := time.NewTicker(min(max(r.timeout/10, 10*time.Millisecond), time.Second))
	defer tick.Stop()
	for {
		select {
		case now := <-tick.C:
			for _, c := range r.conns {
				c.watch(now)
			}
		case <-r.stop:
			return
		}
	}
}

// reqList is an intrusive list of requests.
type reqList = intrusive.List[req]
