package raftstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"sort"
)

// Plugin selection is site state (plugins/ABI.md, README "Swap a post-processing plugin"): which plugin runs each
// post-processing step, and WASM modules installed into the site so every
// node can load them. Modules are not secret and are stored as is.

// MaxPluginSize bounds an installed module (it travels in one Raft entry).
const MaxPluginSize = 32 << 20

// PluginModule is an installed WASM module and its manifest entry.
type PluginModule struct {
	Name    string `json:"name"`
	Step    string `json:"step"`
	Version string `json:"version"`
	ABI     int    `json:"abi"`
	SHA256  string `json:"sha256"` // hex of sha256(WASM)
	WASM    []byte `json:"wasm,omitempty"`
}

// PluginState is the site's plugin selection and installed modules
// (without their code).
type PluginState struct {
	Active    map[string]string `json:"active"` // step kind -> plugin name
	Installed []PluginModule    `json:"installed"`
}

type pluginCmd struct {
	At int64 `json:"at"`
	// Use: set Active[Step] = Name (empty Name clears the step).
	Step string `json:"step,omitempty"`
	Name string `json:"name,omitempty"`
	// Install: add a module.
	Install *PluginModule `json:"install,omitempty"`
	// Remove: drop an installed module (refused while active).
	Remove string `json:"remove,omitempty"`
}

func (st *fsmState) plugin(c *pluginCmd) result {
	n := 0
	if c.Step != "" {
		n++
	}
	if c.Install != nil {
		n++
	}
	if c.Remove != "" {
		n++
	}
	if n != 1 {
		return invalid("plugin: exactly one of use, install, remove")
	}
	switch {
	case c.Install != nil:
		m := c.Install
		if m.Name == "" || m.Step == "" || len(m.WASM) == 0 || len(m.WASM) > MaxPluginSize {
			return invalid("plugin: module needs a name, a step and 1..%d bytes of code", MaxPluginSize)
		}
		sum := sha256.Sum256(m.WASM)
		if m.SHA256 != hex.EncodeToString(sum[:]) {
			return invalid("plugin %s: sha256 mismatch", m.Name)
		}
		if old, ok := st.plugins[m.Name]; ok {
			if old.SHA256 == m.SHA256 && old.Step == m.Step && old.Version == m.Version && old.ABI == m.ABI {
				return result{}
			}
			return invalid("plugin %s already installed with different content", m.Name)
		}
		cp := *m
		st.plugins[m.Name] = &cp
	case c.Remove != "":
		if _, ok := st.plugins[c.Remove]; !ok {
			return result{err: fmt.Errorf("%w: plugin %s", ErrKeyNotFound, c.Remove)}
		}
		for step, name := range st.active {
			if name == c.Remove {
				return invalid("plugin %s is active for step %s", c.Remove, step)
			}
		}
		delete(st.plugins, c.Remove)
	default:
		if c.Name == "" {
			delete(st.active, c.Step)
		} else {
			st.active[c.Step] = c.Name
		}
	}
	return result{}
}

func (f *fsm) pluginState() PluginState {
	f.mu.RLock()
	defer f.mu.RUnlock()
	ps := PluginState{Active: maps.Clone(f.st.active)}
	if ps.Active == nil {
		ps.Active = map[string]string{}
	}
	for _, m := range f.st.plugins {
		cp := *m
		cp.WASM = nil
		ps.Installed = append(ps.Installed, cp)
	}
	sort.Slice(ps.Installed, func(i, j int) bool { return ps.Installed[i].Name < ps.Installed[j].Name })
	return ps
}

// Plugins returns the site's plugin selection from the leader's committed
// state.
func (s *Store) Plugins(ctx context.Context) (PluginState, error) {
	if err := s.readCheck(ctx); err != nil {
		return PluginState{}, err
	}
	return s.fsm.pluginState(), nil
}

// PluginModule returns an installed module with its code. Modules are
// immutable once installed, so this reads this node's applied state on any
// node; ErrKeyNotFound when not installed (here, yet).
func (s *Store) PluginModule(ctx context.Context, name string) (PluginModule, error) {
	s.fsm.mu.RLock()
	defer s.fsm.mu.RUnlock()
	m, ok := s.fsm.st.plugins[name]
	if !ok {
		return PluginModule{}, fmt.Errorf("%w: plugin %s not installed", ErrKeyNotFound, name)
	}
	cp := *m
	cp.WASM = slices.Clone(m.WASM)
	return cp, nil
}

// PluginDigest returns the sha256 of an installed module from this node's
// applied state; false when it is not installed (here, yet).
func (s *Store) PluginDigest(name string) (string, bool) {
	s.fsm.mu.RLock()
	defer s.fsm.mu.RUnlock()
	m, ok := s.fsm.st.plugins[name]
	if !ok {
		return "", false
	}
	return m.SHA256, true
}

// UsePlugin selects the plugin for a step (empty name: back to the
// default). The link negotiates the change with the peer site before a
// session uses it.
func (s *Store) UsePlugin(ctx context.Context, step, name string) error {
	if step == "" {
		return fmt.Errorf("%w: empty step", ErrInvalid)
	}
	return s.submit(ctx, cmdPlugin, pluginCmd{At: s.now(), Step: step, Name: name}).err
}

// InstallPlugin stores a module in the site (idempotent for identical
// content). An empty m.SHA256 is computed.
func (s *Store) InstallPlugin(ctx context.Context, m PluginModule) error {
	if m.SHA256 == "" {
		sum := sha256.Sum256(m.WASM)
		m.SHA256 = hex.EncodeToString(sum[:])
	}
	return s.submit(ctx, cmdPlugin, pluginCmd{At: s.now(), Install: &m}).err
}

// RemovePlugin drops an installed module that no step uses.
func (s *Store) RemovePlugin(ctx context.Context, name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty plugin name", ErrInvalid)
	}
	return s.submit(ctx, cmdPlugin, pluginCmd{At: s.now(), Remove: name}).err
}

type snapPlugins struct {
	Active  [][2]string    `json:"active"`
	Modules []PluginModule `json:"modules"`
}

func (st *fsmState) exportPlugins() snapPlugins {
	var sp snapPlugins
	for _, k := range slices.Sorted(maps.Keys(st.active)) {
		sp.Active = append(sp.Active, [2]string{k, st.active[k]})
	}
	for _, k := range slices.Sorted(maps.Keys(st.plugins)) {
		sp.Modules = append(sp.Modules, *st.plugins[k])
	}
	return sp
}

func (st *fsmState) importPlugins(sp snapPlugins) {
	for _, kv := range sp.Active {
		st.active[kv[0]] = kv[1]
	}
	for _, m := range sp.Modules {
		cp := m
		st.plugins[m.Name] = &cp
	}
}
