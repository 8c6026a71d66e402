module github.com/stackd/stackd

go 1.26.0

require (
	github.com/pojntfx/go-nbd v0.3.2
	golang.org/x/sys v0.50.0
	gopkg.in/yaml.v3 v3.0.1
)
