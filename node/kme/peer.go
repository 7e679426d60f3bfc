package kme

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"qkdkms/etsi"
	"qkdkms/raftstore"
)

// peer is a peer site: its node addresses, the one that answered last (its
// leader, ideally), and the relay queue feeding the relay workers.
type peer struct {
	kme   *KME
	id    string
	addrs []string // HTTPS base URLs

	mu        sync.Mutex
	preferred int

	queues []chan *relayItem // one per relay worker
}

// relay item states.
const (
	itemQueued int32 = iota
	itemTaken
	itemCancelled
)

type relayItem struct {
	a        raftstore.Assignment
	deadline time.Time
	state    atomic.Int32
	done     chan error // buffered, receives exactly one result once taken
}

// enqueue hands one assignment to the relay worker of its connection.
// Every connection always goes through the same worker, so its assignments
// mostly reach the slave site in carve order (the slave site accepts a
// late one into the hole it left, within the store's retry window).
func (p *peer) enqueue(ctx context.Context, a raftstore.Assignment) (*relayItem, error) {
	k := p.kme
	it := &relayItem{a: a, done: make(chan error, 1)}
	it.deadline = time.Now().Add(k.cfg.RelayTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(it.deadline) {
		it.deadline = d
	}
	h := fnv.New32a()
	h.Write([]byte(a.MasterSAE + "|" + a.SlaveSAE))
	q := p.queues[h.Sum32()%uint32(len(p.queues))]
	timer := time.NewTimer(time.Until(it.deadline))
	defer timer.Stop()
	select {
	case q <- it:
		return it, nil
	case <-timer.C:
		return nil, fmt.Errorf("%w: relay queue to %s full until the deadline", etsi.ErrUnavailable, p.id)
	case <-k.done:
		return nil, fmt.Errorf("%w: shutting down", etsi.ErrUnavailable)
	}
}

// wait waits for the slave site to have committed the assignment (nil) or
// for its relay to fail. It never returns not-leader: a failure here means
// the keys must be burned.
func (p *peer) wait(it *relayItem) error {
	k := p.kme
	timer := time.NewTimer(time.Until(it.deadline))
	defer timer.Stop()
	select {
	case err := <-it.done:
		return err
	case <-timer.C:
	case <-k.done:
	}
	if it.state.CompareAndSwap(itemQueued, itemCancelled) {
		return fmt.Errorf("%w: relay to %s not sent before the deadline", etsi.ErrUnavailable, p.id)
	}
	// A worker is sending it under the same deadline: its answer decides.
	return <-it.done
}

// relayWorker sends queued assignments, as many per request as are queued
// when it picks up the first (up to MaxRelayBatch), in queue order.
func (p *peer) relayWorker(q chan *relayItem) {
	k := p.kme
	defer k.wg.Done()
	for {
		var first *relayItem
		select {
		case first = <-q:
		case <-k.done:
			return
		}
		batch := make([]*relayItem, 0, 16)
		if first.state.CompareAndSwap(itemQueued, itemTaken) {
			batch = append(batch, first)
		}
	drain:
		for len(batch) < k.cfg.MaxRelayBatch {
			select {
			case it := <-q:
				if it.state.CompareAndSwap(itemQueued, itemTaken) {
					batch = append(batch, it)
				}
			default:
				break drain
			}
		}
		if len(batch) > 0 {
			p.sendBatch(batch)
		}
	}
}

func (p *peer) sendBatch(batch []*relayItem) {
	k := p.kme
	deadline := batch[0].deadline
	in := assignmentsArgs{From: k.id, Assignments: make([]raftstore.Assignment, len(batch))}
	for i, it := range batch {
		in.Assignments[i] = it.a
		if it.deadline.Before(deadline) {
			deadline = it.deadline
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var res assignmentsResult
	err := p.call(ctx, opPeerAssignments, in, &res)
	if err == nil && len(res.Results) != len(batch) {
		err = fmt.Errorf("%w: %s answered %d results for %d assignments", etsi.ErrUnavailable, p.id, len(res.Results), len(batch))
	}
	for i, it := range batch {
		switch {
		case err != nil:
			it.done <- err
		case res.Results[i] != "":
			it.done <- fmt.Errorf("%w: slave site %s refused the assignment: %s", etsi.ErrUnavailable, p.id, res.Results[i])
		default:
			it.done <- nil
		}
	}
}

func (p *peer) pick() (int, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.preferred, p.addrs[p.preferred]
}

// failed moves on to the next address unless another call already did.
func (p *peer) failed(i int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.preferred == i {
		p.preferred = (i + 1) % len(p.addrs)
	}
}

// hint adopts the leader a peer node named, if it is one of the peer's
// configured addresses.
func (p *peer) hint(h http.Header) {
	l := h.Get(leaderHeader)
	if l == "" {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, a := range p.addrs {
		if a == l {
			p.preferred = i
			return
		}
	}
}

// call runs an (idempotent) peer operation at the peer site, trying its
// nodes in turn on transport errors and not-leader/no-leader answers until
// ctx ends. It never returns not-leader or no-leader.
func (p *peer) call(ctx context.Context, op string, in, out any) error {
	if len(p.addrs) == 0 {
		return fmt.Errorf("%w: no address for peer %s", etsi.ErrUnavailable, p.id)
	}
	backoff := 5 * time.Millisecond
	for tries := 1; ; tries++ {
		i, base := p.pick()
		err := p.kme.post(ctx, base+"/internal/v1/peer/"+op, in, out, p.hint)
		var te *transportError
		if err == nil {
			return nil
		}
		if !errors.As(err, &te) && !isRetryable(err) {
			return err
		}
		p.failed(i)
		if ctx.Err() != nil {
			return fmt.Errorf("%w: peer %s %s: %v", etsi.ErrUnavailable, p.id, op, err)
		}
		if tries%len(p.addrs) == 0 {
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("%w: peer %s %s: %v", etsi.ErrUnavailable, p.id, op, err)
			case <-t.C:
			}
			backoff = min(backoff*2, 200*time.Millisecond)
		}
	}
}

// ---------------------------------------------------------------- peer side

// checkPeerConn verifies that the connection master→slave exists here with
// from as its source site and this site as its target.
func (k *KME) checkPeerConn(ctx context.Context, from, master, slave string) error {
	c, err := k.connRoles(ctx, master, slave)
	if err != nil {
		return err
	}
	if c.SourceKME != from || c.TargetKME != k.id {
		return fmt.Errorf("%w: connection %s runs %s → %s, not %s → %s",
			etsi.ErrUnauthorized, c.ID(), c.SourceKME, c.TargetKME, from, k.id)
	}
	return nil
}

// localRecord commits relayed assignments (slave site leader), in the
// order they were sent for each connection (mostly carve order, which
// leaves the fewest holes), connections concurrently so the store groups
// their commands into few Raft entries.
// When leadership is lost midway the whole batch reports not-leader and is
// retried elsewhere (RecordAssignment is idempotent on the request ID).
func (k *KME) localRecord(ctx context.Context, in assignmentsArgs) (assignmentsResult, error) {
	res := assignmentsResult{Results: make([]string, len(in.Assignments))}
	byConn := map[string][]int{}
	var order []string
	for i, a := range in.Assignments {
		err := k.checkPeerConn(ctx, in.From, a.MasterSAE, a.SlaveSAE)
		if err == nil && (len(a.Slaves) == 0 || a.Slaves[0] != a.SlaveSAE) {
			err = fmt.Errorf("%w: assignment must name the slave first", etsi.ErrBadRequest)
		}
		for _, s := range a.Slaves[min(1, len(a.Slaves)):] {
			if err == nil {
				err = k.checkPeerConn(ctx, in.From, a.MasterSAE, s)
			}
		}
		if err != nil {
			if isRetryable(err) {
				return assignmentsResult{}, err
			}
			res.Results[i] = codeOf(err)
			k.log.Warn("relayed assignment refused", "from", in.From, "request_id", a.RequestID, "err", err)
			continue
		}
		id := a.MasterSAE + "|" + a.SlaveSAE
		if _, ok := byConn[id]; !ok {
			order = append(order, id)
		}
		byConn[id] = append(byConn[id], i)
	}
	var wg sync.WaitGroup
	var lost atomic.Bool
	for _, id := range order {
		wg.Add(1)
		go func(idx []int) {
			defer wg.Done()
			for _, i := range idx {
				a := in.Assignments[i]
				if err := k.site.RecordAssignment(ctx, a); err != nil {
					// Outcome unknown: RecordAssignment is idempotent on
					// the request ID, so the batch is retried elsewhere.
					if isRetryable(err) || errors.Is(err, raftstore.ErrOutcomeUnknown) {
						lost.Store(true)
						return
					}
					res.Results[i] = codeOf(err)
					k.log.Warn("record assignment failed", "from", in.From, "request_id", a.RequestID, "err", err)
				}
			}
		}(byConn[id])
	}
	wg.Wait()
	if lost.Load() {
		return assignmentsResult{}, raftstore.ErrNotLeader
	}
	return res, nil
}

// localPeerBurn burns keys the master site could not hand out.
func (k *KME) localPeerBurn(ctx context.Context, in burnArgs) error {
	if len(in.KeyIDs) == 0 {
		return nil
	}
	return k.site.BurnKeys(ctx, in.KeyIDs)
}

// localPeerRegister registers a connection a peer site registered with us.
func (k *KME) localPeerRegister(ctx context.Context, in peerRegisterArgs) error {
	c := in.Connection
	ok := (c.SourceKME == in.From && c.TargetKME == k.id) || (c.TargetKME == in.From && c.SourceKME == k.id)
	if !ok {
		return fmt.Errorf("%w: connection %s → %s does not join %s and %s",
			etsi.ErrUnauthorized, c.SourceKME, c.TargetKME, in.From, k.id)
	}
	if c.MasterSAE == "" || c.SlaveSAE == "" || c.MasterSAE == c.SlaveSAE {
		return fmt.Errorf("%w: master and slave SAE IDs must be distinct and non-empty", etsi.ErrBadRequest)
	}
	// The cap holds for connections a peer site registers too. No regMu:
	// the peer holds its own while it calls, and the two sites waiting on
	// each other's would deadlock.
	if _, err := k.site.Connection(ctx, c.MasterSAE, c.SlaveSAE); errors.Is(err, raftstore.ErrConnectionNotFound) {
		if err := k.checkCap(ctx); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if err := k.site.RegisterConnection(ctx, c); err != nil {
		return err
	}
	k.remember(c)
	return nil
}

// localPeerStatus answers a peer's question about a connection joining
// the two sites (pool level, blocks added); in.From is the peer.
func (k *KME) localPeerStatus(ctx context.Context, in connArgs) (raftstore.ConnectionStatus, error) {
	from := in.From
	s, err := k.site.Connection(ctx, in.Master, in.Slave)
	if err != nil {
		return raftstore.ConnectionStatus{}, err
	}
	c := s.Connection
	if !((c.SourceKME == from && c.TargetKME == k.id) || (c.TargetKME == from && c.SourceKME == k.id)) {
		return raftstore.ConnectionStatus{}, fmt.Errorf("%w: connection %s does not join %s and %s", etsi.ErrUnauthorized, c.ID(), from, k.id)
	}
	return s, nil
}

// localPeerBlock adds a block the peer site imports at both sites.
func (k *KME) localPeerBlock(ctx context.Context, in blockArgs) error {
	s, err := k.site.Connection(ctx, in.Master, in.Slave)
	if err != nil {
		return err
	}
	c := s.Connection
	if !((c.SourceKME == in.From && c.TargetKME == k.id) || (c.TargetKME == in.From && c.SourceKME == k.id)) {
		return fmt.Errorf("%w: connection %s does not join %s and %s", etsi.ErrUnauthorized, c.ID(), in.From, k.id)
	}
	return k.addBlock(ctx, c, in.BlockID, in.Bits)
}

func (k *KME) addBlock(ctx context.Context, c raftstore.Connection, blockID string, bits []byte) error {
	err := k.site.AddBlock(ctx, raftstore.Block{ConnectionID: c.ID(), BlockID: blockID, Bits: bits})
	if errors.Is(err, raftstore.ErrBlockExists) {
		return nil // idempotent: imported before
	}
	return err
}

// ImportBlock adds one block of key material (from an external source, or
// the operator) to the pool of connection master→slave at both sites: the
// slave site first, then the master site, each idempotent on blockID, so a
// failed import is completed by running it again with the same block.
// Imports must be applied in the same order at both sites: after an error,
// repeat the same import before importing another block.
func (k *KME) ImportBlock(ctx context.Context, master, slave, blockID string, bits []byte) error {
	_, err := onLeader(ctx, k, opImportBlock, blockArgs{Master: master, Slave: slave, BlockID: blockID, Bits: bits}, noResult((*KME).localImport))
	return err
}

func (k *KME) localImport(ctx context.Context, in blockArgs) error {
	if in.BlockID == "" || len(in.Bits) == 0 {
		return fmt.Errorf("%w: block_id and bits are required", etsi.ErrBadRequest)
	}
	k.importMu.Lock()
	defer k.importMu.Unlock()
	s, err := k.site.Connection(ctx, in.Master, in.Slave)
	if err != nil {
		return err
	}
	c := s.Connection
	other := c.SourceKME
	if other == k.id {
		other = c.TargetKME
	}
	p := k.peers[other]
	if p == nil || other == k.id {
		return fmt.Errorf("%w: connection %s has no peer site configured here", etsi.ErrBadRequest, c.ID())
	}
	// Both pools must hold the same blocks in the same order (keys are
	// ranges of the block stream). A half-done import (slave site only)
	// must be completed with the same block before any other.
	var ps raftstore.ConnectionStatus
	if err := p.call(ctx, opPeerStatus, connArgs{Master: in.Master, Slave: in.Slave}, &ps); err != nil {
		return fmt.Errorf("pool status at %s: %w", other, err)
	}
	slaveAdded, masterAdded := s.AddedBlocks, ps.AddedBlocks
	if c.SourceKME == k.id {
		slaveAdded, masterAdded = ps.AddedBlocks, s.AddedBlocks
	}
	// The half-done import is recorded in this site's replicated state
	// (raftstore BeginImport), so a new leader continues it.
	pending := s.PendingImport
	if slaveAdded != masterAdded && pending != in.BlockID {
		hint := "not recorded at " + k.id
		if pending != "" {
			hint = pending
		}
		return fmt.Errorf("%w: pools out of step: slave site %s holds %d blocks, master site %s %d; import the block whose import failed first (%s)",
			etsi.ErrConflict, c.TargetKME, slaveAdded, c.SourceKME, masterAdded, hint)
	}
	if err := k.site.BeginImport(ctx, in.Master, in.Slave, in.BlockID); err != nil {
		return fmt.Errorf("record the import of %s: %w", in.BlockID, err)
	}
	remote := func() error {
		if err := p.call(ctx, opPeerBlock, blockArgs{From: k.id, Master: in.Master, Slave: in.Slave, BlockID: in.BlockID, Bits: in.Bits}, &struct{}{}); err != nil {
			return fmt.Errorf("import block at %s: %w", other, err)
		}
		return nil
	}
	local := func() error { return k.addBlock(ctx, c, in.BlockID, in.Bits) }
	steps := []func() error{remote, local} // this site is the master: slave first
	if c.TargetKME == k.id {
		steps = []func() error{local, remote}
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	if err := k.site.EndImport(ctx, in.Master, in.Slave, in.BlockID); err != nil {
		// Both pools hold the block: a record left behind only lets this
		// same block be imported again, which both sites accept as done.
		k.log.Warn("clearing the import record failed", "master", in.Master, "slave", in.Slave, "block_id", in.BlockID, "err", err)
	}
	k.log.Info("block imported", "master", in.Master, "slave", in.Slave, "block_id", in.BlockID, "bits", len(in.Bits)*8)
	return nil
}
