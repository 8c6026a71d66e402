package settings

import (
	"testing"

	"gopkg.in/yaml.v3"
)

func TestFloat(t *testing.T) {
	for _, c := range []struct {
		src  string
		want float64
		err  string
	}{
		{"0.25", 0.25, ""},
		{"1", 1, ""},
		{"1.0", 1, ""},
		{"-0.5", -0.5, ""},
		{".nan", 0, `line 1: rate must be a number such as 0.5, not the number .nan`},
		{".inf", 0, `line 1: rate must be a number such as 0.5, not the number .inf`},
		{"half", 0, `line 1: rate must be a number such as 0.5, not "half"`},
		{"[1]", 0, `line 1: rate must be a number such as 0.5, not a list`},
	} {
		var doc yaml.Node
		if err := yaml.Unmarshal([]byte(c.src), &doc); err != nil {
			t.Fatal(err)
		}
		var f Float
		err := Named(doc.Content[0], 0, "rate", &f)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != c.err || f.F != c.want || (err == nil) != (f.Line == 1) {
			t.Errorf("%s: %v (%+v), want %v, %q", c.src, err, f, c.want, c.err)
		}
	}
}

func TestSuggestIgnoresCase(t *testing.T) {
	for _, c := range []struct{ name, want string }{
		{"eio", ` (did you mean "EIO"?)`},
		{"ENOSPCC", ` (did you mean "ENOSPC"?)`},
		{"Read", ` (did you mean "read"?)`},
		{"EBADF", ` (want EIO, ENOSPC, read)`},
	} {
		if got := Suggest(c.name, []string{"EIO", "ENOSPC", "read"}, ""); got != c.want {
			t.Errorf("Suggest(%q) = %q, want %q", c.name, got, c.want)
		}
	}
}
