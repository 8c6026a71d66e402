module github.com/stackd/stackd

go 1.26.0

require (
	github.com/pojntfx/go-nbd v0.3.2 // indirect
	golang.org/x/sys v0.50.0 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)
