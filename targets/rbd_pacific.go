//go:build rbd && !pacific

package targets

// go-ceph v0.34.0 does not compile against Ceph 16 (Pacific) headers
// without its pacific tag, and fails with errors far from the cause; this
// one names it.
var _ = the_rbd_tag_needs_the_pacific_tag_too_build_with_tags_rbd_pacific
