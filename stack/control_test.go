package stack

import "testing"

func TestLookup(t *testing.T) {
	st, err := Build("e", stripeSpec(4096, PoolSpec{}, memorySpec(1<<20, 0), memorySpec(1<<20, 0)), BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
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
