// Package host runs post-processing steps: as WASM plugins under wazero
// (Host) or natively (Native). Both satisfy Runner, so a session does not care
// which it got, and tests can check the two give bit-identical results.
//
// The WASM host: one wazero runtime, an on-disk compilation cache, modules
// pinned by sha256 in a manifest, instrumented (plugins/instrument) and
// compiled once, a fresh instance per step of a session, a memory page
// limit, a per-call deadline checked by the instrumented modules' yield
// calls, WASI with no filesystem, no arguments or environment, a clock
// frozen at zero and a random source seeded by the host, and the guest's
// memory in its own mapping, unmapped when the instance is closed. Admit
// checks a module before it is installed into a site.
package host

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/all"
)

// Errors at the package boundary.
var (
	ErrManifest = errors.New("plugin host: bad manifest")
	ErrHash     = errors.New("plugin host: module hash mismatch")
	ErrABI      = errors.New("plugin host: module does not implement the ABI")
	ErrUnknown  = errors.New("plugin host: no such plugin")
	ErrPlugin   = errors.New("plugin host: plugin reported an error")
	ErrTrap     = errors.New("plugin host: plugin trapped or was stopped")
	ErrResult   = errors.New("plugin host: plugin returned a malformed result")
	ErrClosed   = errors.New("plugin host: instance closed")
)

// Info identifies a plugin.
type Info struct {
	Name    string     `json:"name"`
	Kind    steps.Kind `json:"step"`
	Version string     `json:"version"`
	ABI     int        `json:"abi"`
	SHA256  string     `json:"sha256,omitempty"` // empty for native steps
}

// ID is name@version, plus #sha256 for WASM plugins.
func (i Info) ID() string {
	s := i.Name + "@" + i.Version
	if i.SHA256 != "" {
		s += "#" + i.SHA256
	} else {
		s += "#native"
	}
	return s
}

// Selection picks the plugin (by name) for each step kind. Kinds not listed
// get the first plugin of that kind.
type Selection map[steps.Kind]string

// Runner creates step instances from a fixed set of plugins, one per kind.
type Runner interface {
	// New creates a fresh instance of the selected plugin for kind.
	New(ctx context.Context, kind steps.Kind, role steps.Role, params, seed []byte) (Instance, error)
	// Plugin returns the plugin selected for kind.
	Plugin(kind steps.Kind) Info
	// Identity names the whole plugin set: "kind=name@version#sha256;…" in
	// pipeline order. Two parties must have equal identities.
	Identity() string
}

// Instance is one step of one party of one session.
type Instance interface {
	Step(ctx context.Context, in steps.Input) (steps.Result, error)
	// Close releases the instance (and a WASM instance's memory).
	Close(ctx context.Context) error
}

func identity(sel map[steps.Kind]Info) string {
	var parts []string
	for _, k := range steps.Kinds {
		if i, ok := sel[k]; ok {
			parts = append(parts, string(k)+"="+i.ID())
		}
	}
	return strings.Join(parts, ";")
}

func choose(avail []Info, sel Selection) (map[steps.Kind]Info, error) {
	out := map[steps.Kind]Info{}
	for _, k := range steps.Kinds {
		want, named := sel[k]
		for _, i := range avail {
			if i.Kind == k && (!named || i.Name == want) {
				out[k] = i
				break
			}
		}
		if _, ok := out[k]; !ok {
			if named {
				return nil, fmt.Errorf("%w: %s plugin %q", ErrUnknown, k, want)
			}
			return nil, fmt.Errorf("%w: no %s plugin", ErrUnknown, k)
		}
	}
	for k := range sel {
		if _, ok := out[k]; !ok {
			return nil, fmt.Errorf("%w: step kind %q", ErrUnknown, k)
		}
	}
	return out, nil
}

// native runs the step code in-process.
type native struct {
	sel map[steps.Kind]Info
	fac map[steps.Kind]steps.Factory
}

// Native returns a Runner over the shipped step packages (steps/all).
func Native(sel Selection) (Runner, error) {
	var avail []Info
	fac := map[string]steps.Factory{}
	for _, p := range all.Plugins {
		avail = append(avail, Info{Name: p.Name, Kind: p.Kind, Version: p.Version, ABI: steps.ABIVersion})
		fac[p.Name] = p.New
	}
	s, err := choose(avail, sel)
	if err != nil {
		return nil, err
	}
	n := &native{sel: s, fac: map[steps.Kind]steps.Factory{}}
	for k, i := range s {
		n.fac[k] = fac[i.Name]
	}
	return n, nil
}

func (n *native) Plugin(k steps.Kind) Info { return n.sel[k] }
func (n *native) Identity() string         { return identity(n.sel) }

func (n *native) New(ctx context.Context, kind steps.Kind, role steps.Role, params, seed []byte) (Instance, error) {
	f, ok := n.fac[kind]
	if !ok {
		return nil, fmt.Errorf("%w: step kind %q", ErrUnknown, kind)
	}
	s, err := f(role, params, seed)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrPlugin, n.sel[kind].Name, err)
	}
	return &nativeInst{s: s, name: n.sel[kind].Name}, nil
}

type nativeInst struct {
	s    steps.Step
	name string
}

func (i *nativeInst) Step(ctx context.Context, in steps.Input) (steps.Result, error) {
	if i.s == nil {
		return steps.Result{}, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return steps.Result{}, err
	}
	r, err := i.s.Step(in)
	if err != nil {
		return steps.Result{}, fmt.Errorf("%w: %s: %w", ErrPlugin, i.name, err)
	}
	// copy, so the caller owns the bytes like with WASM
	r.Output = append([]byte(nil), r.Output...)
	if r.HasMsg {
		r.Msg = append([]byte{}, r.Msg...)
	}
	return r, nil
}

func (i *nativeInst) Close(context.Context) error { i.s = nil; return nil }

// sortedInfos orders plugins by kind (pipeline order) then manifest order.
func sortedInfos(in []Info) []Info {
	order := map[steps.Kind]int{}
	for i, k := range steps.Kinds {
		order[k] = i
	}
	out := append([]Info(nil), in...)
	sort.SliceStable(out, func(a, b int) bool { return order[out[a].Kind] < order[out[b].Kind] })
	return out
}
