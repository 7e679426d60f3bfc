package raftstore

// FSM commands of the key group: issue (master site), record (slave site),
// consume and burn.

import (
	"fmt"
	"slices"
	"time"
)

func (st *fsmState) issued(e *reqEntry) result {
	if e.code != 0 {
		return result{err: codeErr(e.code)}
	}
	ks := make([]*keyRec, 0, len(e.keyIDs))
	for _, id := range e.keyIDs {
		k, ok := st.keys[id]
		if !ok || k.state == kBurned {
			return result{err: fmt.Errorf("%w: retried request's keys were burned", ErrKeyNotFound)}
		}
		ks = append(ks, k)
	}
	k0 := ks[0]
	cs := st.conns[k0.conn]
	a := &Assignment{RequestID: k0.requestID, MasterSAE: cs.conn.MasterSAE, SlaveSAE: cs.conn.SlaveSAE,
		Slaves: slices.Clone(k0.named), IssuedAt: time.Unix(0, k0.issuedAt).UTC()}
	for _, k := range ks {
		a.Keys = append(a.Keys, KeyRange{KeyID: k.id, Offset: k.off, Bits: k.bits})
	}
	return result{keys: st.outKeys(ks), assignment: a}
}

func validSlaves(master, slave string, slaves []string) error {
	if len(slaves) == 0 || slaves[0] != slave {
		return fmt.Errorf("%w: slaves must start with the connection's slave", ErrInvalid)
	}
	if dupOrEmpty(slaves) {
		return fmt.Errorf("%w: duplicate or empty slave SAE ID", ErrInvalid)
	}
	for _, s := range slaves {
		if s == master || !validSAE(s) {
			return fmt.Errorf("%w: slave SAE ID %q not allowed", ErrInvalid, s)
		}
	}
	return nil
}

func (st *fsmState) issue(c *issueCmd) result {
	if c.RequestID == "" {
		return invalid("issue: empty request ID")
	}
	rk := "issue:" + c.RequestID
	if e, ok := st.reqs[rk]; ok {
		return st.issued(e)
	}
	if r := st.issueCheck(c); r.err != nil {
		return r
	}
	id := Connection{MasterSAE: c.MasterSAE, SlaveSAE: c.SlaveSAE}.ID()
	cs := st.conns[id]
	ks := make([]*keyRec, len(c.KeyIDs))
	for i, kid := range c.KeyIDs {
		k := &keyRec{id: kid, conn: id, role: roleMaster, master: c.MasterSAE, named: slices.Clone(c.Slaves),
			pending: slices.Clone(c.Slaves), off: cs.carve, bits: c.Size, issuedAt: c.IssuedAt.UnixNano(),
			requestID: c.RequestID}
		cs.carve += int64(c.Size)
		st.keys[kid] = k
		st.acquire(k)
		ks[i] = k
	}
	cs.live += int64(len(ks))
	cs.prune()
	st.remember(rk, c.At, 0, "", slices.Clone(c.KeyIDs))
	return st.issued(st.reqs[rk])
}

func (st *fsmState) issueCheck(c *issueCmd) result {
	id := Connection{MasterSAE: c.MasterSAE, SlaveSAE: c.SlaveSAE}.ID()
	cs, ok := st.conns[id]
	if !ok {
		return result{err: fmt.Errorf("%w: %s", ErrConnectionNotFound, id)}
	}
	cn := cs.conn
	switch {
	case c.Size <= 0 || c.Size%8 != 0:
		return invalid("size %d must be a positive multiple of 8", c.Size)
	case cn.MinKeySize > 0 && c.Size < cn.MinKeySize, cn.MaxKeySize > 0 && c.Size > cn.MaxKeySize:
		return invalid("size %d outside [%d, %d]", c.Size, cn.MinKeySize, cn.MaxKeySize)
	case len(c.KeyIDs) == 0:
		return invalid("no key IDs")
	case cn.MaxKeyPerRequest > 0 && len(c.KeyIDs) > cn.MaxKeyPerRequest:
		return invalid("%d keys above max_key_per_request %d", len(c.KeyIDs), cn.MaxKeyPerRequest)
	case dupOrEmpty(c.KeyIDs):
		return invalid("duplicate or empty key ID")
	case len(c.Slaves)-1 > cn.MaxSAEIDCount:
		return invalid("%d additional slaves above max_SAE_ID_count %d", len(c.Slaves)-1, cn.MaxSAEIDCount)
	}
	if err := validSlaves(c.MasterSAE, c.SlaveSAE, c.Slaves); err != nil {
		return result{err: err}
	}
	for _, kid := range c.KeyIDs {
		if _, ok := st.keys[kid]; ok {
			return invalid("key ID %s already in use", kid)
		}
	}
	if need := int64(len(c.KeyIDs)) * int64(c.Size); need > cs.end-cs.carve {
		return result{err: fmt.Errorf("%w: need %d bits, pool holds %d", ErrInsufficientKeys, need, cs.end-cs.carve)}
	}
	return result{}
}

func (st *fsmState) record(c *recordCmd) result {
	a := c.Assignment
	if a.RequestID == "" {
		return invalid("record: empty request ID")
	}
	rk := "record:" + a.RequestID
	if e, ok := st.reqs[rk]; ok {
		return result{err: codeErr(e.code)}
	}
	if r := st.recordCheck(&a); r.err != nil {
		return r
	}
	id := Connection{MasterSAE: a.MasterSAE, SlaveSAE: a.SlaveSAE}.ID()
	cs := st.conns[id]
	for _, kr := range a.Keys {
		end := kr.Offset + int64(kr.Bits)
		if end <= cs.carve {
			cs.fill(kr.Offset, end)
		} else {
			if kr.Offset > cs.carve {
				cs.holes = append(cs.holes, hole{start: cs.carve, end: kr.Offset, at: c.At})
			}
			cs.carve = end
		}
		k := &keyRec{id: kr.KeyID, conn: id, role: roleSlave, master: a.MasterSAE, named: slices.Clone(a.Slaves),
			pending: slices.Clone(a.Slaves), off: kr.Offset, bits: kr.Bits, issuedAt: a.IssuedAt.UnixNano(),
			requestID: a.RequestID}
		st.keys[k.id] = k
		st.acquire(k)
	}
	cs.live += int64(len(a.Keys))
	cs.prune()
	st.remember(rk, c.At, 0, "", nil)
	return result{}
}

func (st *fsmState) recordCheck(a *Assignment) result {
	id := Connection{MasterSAE: a.MasterSAE, SlaveSAE: a.SlaveSAE}.ID()
	cs, ok := st.conns[id]
	if !ok {
		return result{err: fmt.Errorf("%w: %s", ErrConnectionNotFound, id)}
	}
	if len(a.Keys) == 0 {
		return invalid("record: no keys")
	}
	if len(a.Slaves)-1 > cs.conn.MaxSAEIDCount {
		return invalid("record: too many slaves")
	}
	if err := validSlaves(a.MasterSAE, a.SlaveSAE, a.Slaves); err != nil {
		return result{err: err}
	}
	ids := make([]string, len(a.Keys))
	pos := int64(0)
	for i, kr := range a.Keys {
		ids[i] = kr.KeyID
		if kr.Bits <= 0 || kr.Bits%8 != 0 || kr.Offset%8 != 0 || kr.Offset < 0 {
			return invalid("record: key %s has bad range", kr.KeyID)
		}
		if kr.Offset < pos {
			return invalid("record: key ranges overlap or are out of order at %s", kr.KeyID)
		}
		end := kr.Offset + int64(kr.Bits)
		if kr.Offset < cs.carve && !(end <= cs.carve && cs.inHole(kr.Offset, end)) {
			return invalid("record: key %s range [%d, %d) already assigned or burned", kr.KeyID, kr.Offset, end)
		}
		if _, ok := st.keys[kr.KeyID]; ok {
			return invalid("record: key ID %s already in use", kr.KeyID)
		}
		pos = kr.Offset + int64(kr.Bits)
	}
	if dupOrEmpty(ids) {
		return invalid("record: duplicate or empty key ID")
	}
	if pos > cs.end {
		return result{err: fmt.Errorf("%w: assignment reaches bit %d, pool ends at %d", ErrInsufficientKeys, pos, cs.end)}
	}
	return result{}
}

func (st *fsmState) consume(c *consumeCmd) result {
	if c.RequestID == "" {
		return invalid("consume: empty request ID")
	}
	rk := "consume:" + c.RequestID
	if e, ok := st.reqs[rk]; ok {
		if e.caller != c.Caller {
			return invalid("consume: request ID reused by another caller")
		}
		if e.code != 0 {
			return result{err: codeErr(e.code)}
		}
		ks := make([]*keyRec, 0, len(e.keyIDs))
		for _, id := range e.keyIDs {
			k, ok := st.keys[id]
			if !ok {
				return result{err: fmt.Errorf("%w: retried request's keys are gone", ErrKeyNotFound)}
			}
			ks = append(ks, k)
		}
		return result{keys: st.outKeys(ks)}
	}
	ks, r := st.consumeCheck(c)
	if r.err != nil {
		return r
	}
	for _, k := range ks {
		k.pending = slices.DeleteFunc(slices.Clone(k.pending), func(s string) bool { return s == c.Caller })
		if len(k.pending) == 0 {
			k.state = kErased
			cs := st.conns[k.conn]
			cs.live--
			cs.erased++
		}
	}
	st.remember(rk, c.At, 0, c.Caller, slices.Clone(c.KeyIDs))
	return result{keys: st.outKeys(ks)}
}

func (st *fsmState) consumeCheck(c *consumeCmd) ([]*keyRec, result) {
	if len(c.KeyIDs) == 0 || dupOrEmpty(c.KeyIDs) {
		return nil, invalid("consume: empty or duplicate key IDs")
	}
	ks := make([]*keyRec, len(c.KeyIDs))
	for i, id := range c.KeyIDs {
		k, ok := st.keys[id]
		if !ok || k.state != kIssued || k.role != roleSlave {
			return nil, result{err: fmt.Errorf("%w: %s", ErrKeyNotFound, id)}
		}
		ks[i] = k
	}
	for _, k := range ks {
		if k.master == c.MasterSAE && !slices.Contains(k.pending, c.Caller) && slices.Contains(k.named, c.Caller) {
			// A named slave that already fetched this (multicast) key: for
			// it the key is gone, as for a unicast key after its fetch.
			return nil, result{err: fmt.Errorf("%w: %s (already fetched by %s)", ErrKeyNotFound, k.id, c.Caller)}
		}
		if k.master != c.MasterSAE || !slices.Contains(k.pending, c.Caller) {
			return nil, result{err: fmt.Errorf("%w: key %s", ErrNotAuthorized, k.id)}
		}
	}
	return ks, result{}
}

func (st *fsmState) burn(c *burnCmd) result {
	for _, id := range c.KeyIDs {
		k, ok := st.keys[id]
		if !ok || k.state != kIssued {
			continue
		}
		k.state = kBurned
		if cs, ok := st.conns[k.conn]; ok {
			cs.live--
			cs.burned++
		}
		st.finalize(k)
	}
	return result{}
}
