package stack

import "testing"

func TestLookup(t *testing.T) {
	st := mustBuild(t, "e", stripeSpec(4096, PoolSpec{}, memorySpec(1<<20, 0), memorySpec(1<<20, 0)), BuildOptions{})
	defer st.Close()
	n, parent, leg, err := st.Lookup("e/stripe/leg1")
	if err != nil || n.Path != "e/stripe/leg1" || parent == nil || parent.Path != "e/stripe" || leg != 1 {
		t.Fatalf("leg: %v %v %d %v", n, parent, leg, err)
	}
	n, parent, leg, err = st.Lookup("e/stripe")
	if err != nil || n.Path != "e/stripe" || parent != nil || leg != -1 {
		t.Fatalf("root: %v %v %d %v", n, parent, leg, err)
	}
	if _, _, _, err := st.Lookup("e/stripe/leg9"); err == nil {
		t.Fatal("a path that names no node was found")
	}
}

// TestLookupMirrorLeg: the control socket's path to a mirror leg finds
// the mirror, which the leg's number then steers.
func TestLookupMirrorLeg(t *testing.T) {
	spec := mirrorSpec("", 0, PoolSpec{}, memorySpec(1<<20, 0), memorySpec(1<<20, 0))
	st := mustBuild(t, "e", spec, BuildOptions{Logger: quietLog})
	defer st.Close()
	_, parent, leg, err := st.Lookup("e/mirror/leg1")
	if err != nil || parent == nil || parent.Control == nil || leg != 1 {
		t.Fatalf("lookup: %v %d %v", parent, leg, err)
	}
	waitSynced(t, parent.Control.(*Mirror))
	if err := parent.Control.Act("fail", leg); err != nil {
		t.Fatal(err)
	}
	if got := legStates(parent.Control.(*Mirror)); got[1] != "faulty" {
		t.Fatalf("states %v", got)
	}
}
