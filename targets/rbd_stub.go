//go:build !rbd

package targets

func openRBD(RBDOptions) (RBDDevice, error) { return nil, ErrNoRBD }

func probeRBD(RBDOptions) (uint64, error) { return 0, ErrNoRBD }
