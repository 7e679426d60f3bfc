package raftstore

// FSM commands of the connection group: register, update, delete, and the
// connection status read from applied state.

import (
	"fmt"
	"sort"
	"strings"
)

func validSAE(s string) bool { return s != "" && !strings.Contains(s, "|") && len(s) <= 1024 }

func validateConn(c Connection) error {
	switch {
	case !validSAE(c.MasterSAE) || !validSAE(c.SlaveSAE):
		return fmt.Errorf("%w: SAE IDs must be non-empty and contain no '|'", ErrInvalid)
	case c.MasterSAE == c.SlaveSAE:
		return fmt.Errorf("%w: master and slave SAE are the same", ErrInvalid)
	case c.KeySize <= 0 || c.KeySize%8 != 0:
		return fmt.Errorf("%w: key_size %d must be a positive multiple of 8", ErrInvalid, c.KeySize)
	case c.MaxKeyCount < 0 || c.MaxKeyPerRequest < 0 || c.MaxSAEIDCount < 0 || c.MinKeySize < 0 || c.MaxKeySize < 0:
		return fmt.Errorf("%w: negative limit", ErrInvalid)
	case c.MinKeySize%8 != 0 || c.MaxKeySize%8 != 0:
		return fmt.Errorf("%w: min/max key size must be multiples of 8", ErrInvalid)
	case c.MinKeySize > 0 && c.KeySize < c.MinKeySize, c.MaxKeySize > 0 && c.KeySize > c.MaxKeySize:
		return fmt.Errorf("%w: key_size outside min/max", ErrInvalid)
	}
	return nil
}

func (st *fsmState) register(c *registerCmd) result {
	if err := validateConn(c.Conn); err != nil {
		return result{err: err}
	}
	id := c.Conn.ID()
	if cs, ok := st.conns[id]; ok {
		if cs.conn == c.Conn {
			return result{}
		}
		return result{err: fmt.Errorf("%w: %s", ErrConnectionExists, id)}
	}
	st.conns[id] = &connState{conn: c.Conn}
	return result{}
}

func (st *fsmState) update(c *registerCmd) result {
	if err := validateConn(c.Conn); err != nil {
		return result{err: err}
	}
	cs, ok := st.conns[c.Conn.ID()]
	if !ok {
		return result{err: fmt.Errorf("%w: %s", ErrConnectionNotFound, c.Conn.ID())}
	}
	cs.conn = c.Conn
	return result{}
}

func (st *fsmState) deleteConn(c *deleteCmd) result {
	id := Connection{MasterSAE: c.Master, SlaveSAE: c.Slave}.ID()
	if _, ok := st.conns[id]; !ok {
		return result{err: fmt.Errorf("%w: %s", ErrConnectionNotFound, id)}
	}
	// Every key of the connection becomes unfetchable; its blocks go with
	// the connection.
	for kid, k := range st.keys {
		if k.conn == id {
			k.state = kBurned
			delete(st.keys, kid)
		}
	}
	delete(st.conns, id)
	return result{}
}

func (cs *connState) status() ConnectionStatus {
	bits := cs.end - cs.carve
	return ConnectionStatus{Connection: cs.conn, StoredBits: bits, StoredKeys: bits / int64(cs.conn.KeySize),
		IssuedKeys: cs.live, BurnedKeys: cs.burned, ErasedKeys: cs.erased, AddedBlocks: cs.added,
		PendingImport: cs.importing, RelayPending: cs.pending.blockID(),
		Relay: cs.relay}
}

// importMark records or clears the connection's half-done block import.
// Recording replaces an older record: node/kme checks the pools are in step
// (or that this is the recorded block) before it records.
func (st *fsmState) importMark(c *importCmd) result {
	cs, ok := st.conns[c.Conn]
	if !ok {
		return result{err: fmt.Errorf("%w: %s", ErrConnectionNotFound, c.Conn)}
	}
	if c.Block == "" || len(c.Block) > 256 {
		return invalid("import: block ID must be 1..256 bytes")
	}
	switch {
	case !c.Done:
		cs.importing = c.Block
	case cs.importing == c.Block:
		cs.importing = ""
	}
	return result{}
}

func (f *fsm) connection(id string) (ConnectionStatus, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	cs, ok := f.st.conns[id]
	if !ok {
		return ConnectionStatus{}, fmt.Errorf("%w: %s", ErrConnectionNotFound, id)
	}
	return cs.status(), nil
}

func (f *fsm) connections() []ConnectionStatus {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]ConnectionStatus, 0, len(f.st.conns))
	for _, cs := range f.st.conns {
		out = append(out, cs.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID() < out[j].ID() })
	return out
}
