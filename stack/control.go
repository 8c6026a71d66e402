package stack

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Controlled is a node the operator can watch and steer while it runs,
// through the control socket (`stackd status`, `stackd leg`, `stackd
// fault`): a mirror, whose legs can be failed and restored, or a fault
// layer, which can be switched. A node that is not Controlled still shows
// in the status tree, with its pool; it just has no live state or actions.
//
// Both methods are called from the control socket's goroutines, never on
// the request path, concurrently with I/O: the node guards its own state.
type Controlled interface {
	// State returns the node's live state for `stackd status`: a value
	// that encoding/json turns into an object (a struct with json tags),
	// taken under the node's own lock so that it is consistent. A
	// "legs" list with one entry per leg is shown beside each leg; see
	// control.FormatStatus for how the rest is put into words.
	State() any
	// Act performs action on the node itself (leg -1) or on its leg
	// number leg. An action the node does not know, or one that does not
	// fit its state or that leg, is an error that says why; wrap
	// ErrUnknownAction for an action the node never takes.
	Act(action string, leg int) error
}

// ErrUnknownAction is wrapped by Controlled.Act for an action the node
// never takes.
var ErrUnknownAction = errors.New("unknown action")

// Lookup finds the node at path, and, when that node is a leg of a layer
// with many legs ("default/mirror/leg1"), its parent and its leg number;
// otherwise parent is nil and leg is -1.
func (st *Stack) Lookup(path string) (n, parent *Node, leg int, err error) {
	leg = -1
	for i := range st.Nodes {
		if st.Nodes[i].Path == path {
			n = &st.Nodes[i]
			break
		}
	}
	if n == nil {
		return nil, nil, -1, fmt.Errorf("no node at %q", path)
	}
	slash := strings.LastIndexByte(path, '/')
	if slash < 0 {
		return n, nil, -1, nil
	}
	if num, ok := strings.CutPrefix(path[slash+1:], "leg"); ok {
		if i, err := strconv.Atoi(num); err == nil {
			for j := range st.Nodes {
				if st.Nodes[j].Path == path[:slash] {
					return n, &st.Nodes[j], i, nil
				}
			}
		}
	}
	return n, nil, -1, nil
}
