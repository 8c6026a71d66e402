package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/stackd/stackd/configs"
	"github.com/stackd/stackd/control"
)

// defaultControl is where deploy/stackd.yaml puts the control socket, in
// the unit's RuntimeDirectory: the socket the commands use when told of
// no other.
const defaultControl = "/run/stackd/control.sock"

// controlFlags are the flags every command of the control socket takes.
type controlFlags struct {
	fs      *flag.FlagSet
	control *string
	config  *string
}

func newControlFlags(name string, stderr io.Writer) controlFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return controlFlags{
		fs:      fs,
		control: fs.String("control", "", "the control socket (default: the config's control:, else "+defaultControl+")"),
		config:  fs.String("config", "", "the daemon's configuration, whose control: names the socket"),
	}
}

// parse parses args, flags and operands in any order (`stackd leg fail
// PATH -control S` as well as `stackd leg -control S fail PATH`), and
// returns the operands.
func (f controlFlags) parse(args []string) ([]string, error) {
	var operands []string
	for {
		if err := f.fs.Parse(args); err != nil {
			return nil, err
		}
		args = f.fs.Args()
		if len(args) == 0 {
			return operands, nil
		}
		operands = append(operands, args[0])
		args = args[1:]
	}
}

// client returns a client of the socket the flags name.
func (f controlFlags) client() (*control.Client, error) {
	switch {
	case *f.control != "":
		return control.NewClient(*f.control), nil
	case *f.config != "":
		cfg, err := configs.Load(*f.config)
		if err != nil {
			return nil, err
		}
		if cfg.Control == "" {
			return nil, fmt.Errorf("%s names no control socket (control:), so stackd serves none", *f.config)
		}
		return control.NewClient(cfg.Control), nil
	}
	return control.NewClient(defaultControl), nil
}

// status prints the live tree of every export.
func status(args []string, stdout, stderr io.Writer) int {
	f := newControlFlags("status", stderr)
	asJSON := f.fs.Bool("json", false, "print the status as the control socket sends it, in JSON")
	operands, err := f.parse(args)
	if err != nil {
		return 2
	}
	if len(operands) > 0 {
		fmt.Fprintf(stderr, "stackd status: takes no operands, got %q\n", operands)
		return 2
	}
	c, err := f.client()
	if err != nil {
		fmt.Fprintln(stderr, "stackd:", err)
		return 1
	}
	st, raw, err := c.Status(context.Background())
	if err != nil {
		return fail(stderr, err)
	}
	if *asJSON {
		stdout.Write(raw)
		return 0
	}
	control.FormatStatus(stdout, st)
	return 0
}

// leg performs a layer's action on one of its legs: `stackd leg fail
// default/mirror/leg1`.
func leg(args []string, stdout, stderr io.Writer) int {
	return act("leg", "fail|restore PATH", true, args, stdout, stderr)
}

// fault performs a node's own action: `stackd fault default/flakey on`.
func fault(args []string, stdout, stderr io.Writer) int {
	return act("fault", "PATH on|off|down-now", false, args, stdout, stderr)
}

// act runs the command name, whose two operands are as shown: the action
// first for a leg's (onLeg), after the path for a node's own.
func act(name, shown string, onLeg bool, args []string, stdout, stderr io.Writer) int {
	f := newControlFlags(name, stderr)
	operands, err := f.parse(args)
	if err != nil {
		return 2
	}
	if len(operands) != 2 {
		fmt.Fprintf(stderr, "usage: stackd %s %s [-control SOCKET | -config FILE]\n", name, shown)
		return 2
	}
	path, action := operands[0], operands[1]
	if onLeg {
		path, action = action, path
	}
	c, err := f.client()
	if err != nil {
		fmt.Fprintln(stderr, "stackd:", err)
		return 1
	}
	do := c.Act
	if onLeg {
		do = c.ActOnLeg
	}
	res, err := do(context.Background(), path, action)
	if err != nil {
		return fail(stderr, err)
	}
	if res.Leg >= 0 {
		fmt.Fprintf(stdout, "%s: %s leg %d: done\n", res.Path, action, res.Leg)
	} else {
		fmt.Fprintf(stdout, "%s: %s: done\n", res.Path, action)
	}
	return 0
}

// fail prints an error of the control socket; the exit status is 1
// whatever the socket answered, the message says what.
func fail(stderr io.Writer, err error) int {
	var ce *control.Error
	if errors.As(err, &ce) {
		fmt.Fprintf(stderr, "stackd: %s (%d)\n", ce.Msg, ce.Code)
	} else {
		fmt.Fprintln(stderr, "stackd:", err)
	}
	return 1
}
