package raftstore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
)

// The command registry (docs/RAFT-FORMAT.md "Registry"): one entry per
// (type, version) pair, holding everything the log format needs to know
// about a command. Adding a command is adding one entry here, its body
// struct in commands.go and its applier next to the state it changes.

// MaxVersion is the highest cluster version this binary supports: it knows
// every registry entry whose version is at most MaxVersion. Cluster version
// 1 is the log and snapshot format before the registry existed; version 2
// adds cluster_version and import; version 3 adds reconcile and the
// snapshot's restored list (a site seeded from a backup, backup.go);
// version 4 adds relay key (relay.go): add_block version 4 with relay
// material, the relay command and the snapshot's links[].relay.
const MaxVersion uint8 = 4

// cmdEntry describes one command version.
type cmdEntry struct {
	typ     cmdType
	version uint8 // the cluster version that enables it (docs/RAFT-FORMAT.md)
	name    string
	// raise marks the command that raises the cluster version: the leader
	// proposes it once every member supports its target, so it is not
	// gated by the current cluster version.
	raise bool
	// newBody returns a fresh body for strict JSON decoding; decode, when
	// set, replaces JSON decoding (batch).
	newBody func() any
	decode  func(b []byte) (any, error)
	// apply changes the state; at returns the leader clock the command
	// carries (0: none).
	apply func(st *fsmState, body any) result
	at    func(body any) int64
}

// jsonCmd builds the entry of a JSON-bodied command whose body is *T.
func jsonCmd[T any](t cmdType, version uint8, name string, apply func(*fsmState, *T) result, at func(*T) int64) *cmdEntry {
	return &cmdEntry{
		typ: t, version: version, name: name,
		newBody: func() any { return new(T) },
		apply:   func(st *fsmState, b any) result { return apply(st, b.(*T)) },
		at:      func(b any) int64 { return at(b.(*T)) },
	}
}

var registry = newRegistry(
	jsonCmd(cmdRegister, 1, "register", (*fsmState).register, func(c *registerCmd) int64 { return c.At }),
	jsonCmd(cmdUpdate, 1, "update", (*fsmState).update, func(c *registerCmd) int64 { return c.At }),
	jsonCmd(cmdDelete, 1, "delete", (*fsmState).deleteConn, func(c *deleteCmd) int64 { return c.At }),
	jsonCmd(cmdAddBlock, 1, "add_block", (*fsmState).addBlock, func(c *addBlockCmd) int64 { return c.At }),
	jsonCmd(cmdIssue, 1, "issue", (*fsmState).issue, func(c *issueCmd) int64 { return c.At }),
	jsonCmd(cmdRecord, 1, "record", (*fsmState).record, func(c *recordCmd) int64 { return c.At }),
	jsonCmd(cmdConsume, 1, "consume", (*fsmState).consume, func(c *consumeCmd) int64 { return c.At }),
	jsonCmd(cmdBurn, 1, "burn", (*fsmState).burn, func(c *burnCmd) int64 { return c.At }),
	&cmdEntry{typ: cmdBatch, version: 1, name: "batch", decode: func(b []byte) (any, error) { return decodeBatch(b) }},
	jsonCmd(cmdDrop, 1, "drop_last_block", (*fsmState).dropLast, func(c *dropCmd) int64 { return c.At }),
	jsonCmd(cmdPads, 1, "pads", (*fsmState).pads, func(c *padsCmd) int64 { return c.At }),
	jsonCmd(cmdPlugin, 1, "plugin", (*fsmState).plugin, func(c *pluginCmd) int64 { return c.At }),
	raising(jsonCmd(cmdClusterVersion, 2, "cluster_version", (*fsmState).raiseVersion, func(c *clusterVersionCmd) int64 { return c.At })),
	jsonCmd(cmdImport, 2, "import", (*fsmState).importMark, func(c *importCmd) int64 { return c.At }),
	jsonCmd(cmdReconcile, 3, "reconcile", (*fsmState).reconcile, func(c *reconcileCmd) int64 { return c.At }),
	jsonCmd(cmdAddBlock, 4, "add_block", (*fsmState).addRelayBlock, func(c *addRelayBlockCmd) int64 { return c.At }),
	jsonCmd(cmdRelay, 4, "relay", (*fsmState).relay, func(c *relayCmd) int64 { return c.At }),
	jsonCmd(cmdRelayEnd, 4, "relay_end", (*fsmState).relayEnd, func(c *relayEndCmd) int64 { return c.At }),
)

func raising(e *cmdEntry) *cmdEntry { e.raise = true; return e }

type cmdKey struct {
	t cmdType
	v uint8
}

type cmdRegistry struct {
	byKey map[cmdKey]*cmdEntry
	all   []*cmdEntry // registration order
}

// newRegistry indexes the entries; a duplicate or a version outside
// 1..MaxVersion is a programming error caught at package init.
func newRegistry(entries ...*cmdEntry) *cmdRegistry {
	r := &cmdRegistry{byKey: map[cmdKey]*cmdEntry{}}
	for _, e := range entries {
		k := cmdKey{e.typ, e.version}
		if _, dup := r.byKey[k]; dup || e.version == 0 || e.version > MaxVersion || e.name == "" {
			panic(fmt.Sprintf("raftstore: bad registry entry %d/%d %q", e.typ, e.version, e.name))
		}
		r.byKey[k] = e
		r.all = append(r.all, e)
	}
	return r
}

// lookup returns the entry of (t, v) if a binary supporting cluster
// versions up to maxV knows it.
func (r *cmdRegistry) lookup(t cmdType, v, maxV uint8) *cmdEntry {
	if v > maxV {
		return nil
	}
	return r.byKey[cmdKey{t, v}]
}

// latest returns the newest version of t known up to maxV.
func (r *cmdRegistry) latest(t cmdType, maxV uint8) *cmdEntry {
	for v := maxV; v > 0; v-- {
		if e := r.byKey[cmdKey{t, v}]; e != nil {
			return e
		}
	}
	return nil
}

// forBody returns the newest entry of t known up to maxV whose body has
// body's type: a command keeps its older encoding for bodies that fit it
// (add_block without relay material stays version 1).
func (r *cmdRegistry) forBody(t cmdType, body any, maxV uint8) *cmdEntry {
	bt := reflect.TypeOf(body)
	if bt != nil && bt.Kind() == reflect.Pointer {
		bt = bt.Elem()
	}
	for v := maxV; v > 0; v-- {
		e := r.byKey[cmdKey{t, v}]
		if e != nil && (e.newBody == nil || reflect.TypeOf(e.newBody()).Elem() == bt) {
			return e
		}
	}
	return nil
}

// encodeCmd encodes body as the newest version of t this binary knows for
// body's type.
func encodeCmd(t cmdType, body any) ([]byte, error) {
	e := registry.forBody(t, body, MaxVersion)
	if e == nil || e.newBody == nil {
		return nil, fmt.Errorf("raftstore: encode: no JSON entry for command %d", byte(t))
	}
	return encodeEntry(e, body)
}

func encodeEntry(e *cmdEntry, body any) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte(byte(e.typ))
	buf.WriteByte(e.version)
	if err := json.NewEncoder(&buf).Encode(body); err != nil {
		return nil, fmt.Errorf("raftstore: encode %s: %w", e.name, err)
	}
	return buf.Bytes(), nil
}

// decodeCmd decodes one command strictly with every entry of this binary.
func decodeCmd(data []byte) (cmdType, any, error) {
	e, body, err := decodeCmdMax(data, MaxVersion)
	if e == nil {
		if len(data) > 0 {
			return cmdType(data[0]), nil, err
		}
		return 0, nil, err
	}
	return e.typ, body, err
}

// decodeCmdMax decodes one command strictly with the entries of cluster
// versions up to maxV (an older binary's registry, in tests).
func decodeCmdMax(data []byte, maxV uint8) (*cmdEntry, any, error) {
	if len(data) < 2 {
		return nil, nil, fmt.Errorf("%w: %d bytes", errUndecodable, len(data))
	}
	t, v := cmdType(data[0]), data[1]
	e := registry.lookup(t, v, maxV)
	if e == nil {
		return nil, nil, fmt.Errorf("%w: command type %d version %d unknown to this binary (cluster version <= %d)",
			errUndecodable, data[0], v, maxV)
	}
	if e.decode != nil {
		body, err := e.decode(data[2:])
		return e, body, err
	}
	body := e.newBody()
	dec := json.NewDecoder(bytes.NewReader(data[2:]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(body); err != nil {
		return e, nil, fmt.Errorf("%w: %s: %w", errUndecodable, e.name, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return e, nil, fmt.Errorf("%w: %s: trailing data", errUndecodable, e.name)
	}
	return e, body, nil
}
