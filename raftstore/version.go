package raftstore

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// Cluster version (docs/RAFT-FORMAT.md "Cluster version"). Every node
// supports the registry entries up to its MaxVersion. The leader keeps, in
// memory, the highest version each member reported (ReportVersion; node/kme
// forwards every follower's report to the leader) and its own. Once every
// member of the current configuration reported within reportTTL, it
// proposes the lowest of those versions as the cluster version, if that is
// higher than the current one. Reports are not replicated: a new leader
// starts empty and raises nothing until every member reported to it, and a
// stale report (a node downgraded since) expires.

// reportTTL is how long a member's report counts. Members report well
// within it while their version is above the cluster version (node/kme).
const reportTTL = 30 * time.Second

type versionReport struct {
	version uint8
	at      time.Time
}

// NodeID is this node's Raft server ID.
func (s *Store) NodeID() string { return s.cfg.NodeID }

// SupportedVersion is the highest cluster version this node supports.
func (s *Store) SupportedVersion() uint8 { return s.cfg.MaxVersion }

// ClusterVersion is the cluster version in this node's applied state.
func (s *Store) ClusterVersion() uint8 { return s.fsm.clusterVersion() }

// ReportVersion records (on the leader) that member id supports cluster
// versions up to version, and raises the cluster version if every member
// now supports a higher one. ErrNotLeader elsewhere.
func (s *Store) ReportVersion(ctx context.Context, id string, version uint8) error {
	if s.raft.State() != raft.Leader {
		return s.leaderErr()
	}
	if id == "" || version == 0 {
		return fmt.Errorf("%w: version report needs a node ID and a version", ErrInvalid)
	}
	s.reportsMu.Lock()
	s.reports[id] = versionReport{version: version, at: time.Now()}
	s.reportsMu.Unlock()
	s.kickRaise()
	return nil
}

func (s *Store) kickRaise() {
	select {
	case s.raiseKick <- struct{}{}:
	default:
	}
}

// raiser proposes a raise when kicked (a report arrived, or this node
// became leader).
func (s *Store) raiser() {
	defer s.wg.Done()
	for {
		select {
		case <-s.stop:
			return
		case <-s.raiseKick:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s.maybeRaise(ctx)
		cancel()
	}
}

// raiseTarget is the lowest version the configuration's members reported
// (this node counts with its own), false while one has not reported.
func (s *Store) raiseTarget(ctx context.Context) (uint8, bool) {
	srvs, err := s.Servers(ctx)
	if err != nil {
		return 0, false
	}
	target := s.cfg.MaxVersion
	s.reportsMu.Lock()
	defer s.reportsMu.Unlock()
	for _, srv := range srvs {
		if string(srv.ID) == s.cfg.NodeID {
			continue
		}
		r, ok := s.reports[string(srv.ID)]
		if !ok || time.Since(r.at) > reportTTL {
			return 0, false
		}
		target = min(target, r.version)
	}
	return target, true
}

func (s *Store) maybeRaise(ctx context.Context) {
	if s.raft.State() != raft.Leader {
		return
	}
	cur := s.fsm.clusterVersion()
	target, ok := s.raiseTarget(ctx)
	if !ok || target <= cur {
		return
	}
	if err := s.submit(ctx, cmdClusterVersion, clusterVersionCmd{At: s.now(), Version: target}).err; err != nil {
		s.log.Warn("raising the cluster version failed", "from", cur, "to", target, "err", err)
		return
	}
	s.log.Info("cluster version raised", "from", cur, "to", target)
}

// stepDown runs once the FSM stopped at an entry it cannot apply: a leader
// hands leadership to another voter (which may know the entry).
func (s *Store) stepDown() {
	if s.raft.State() != raft.Leader {
		return
	}
	if err := s.raft.LeadershipTransfer().Error(); err != nil {
		s.log.Error("leadership transfer after an unknown log entry failed", "err", err)
	}
}

// BeginImport records blockID as the half-done import of connection
// master→slave (see Site).
func (s *Store) BeginImport(ctx context.Context, master, slave, blockID string) error {
	return s.submit(ctx, cmdImport, importCmd{At: s.now(), Conn: Connection{MasterSAE: master, SlaveSAE: slave}.ID(), Block: blockID}).err
}

// EndImport clears the half-done import record if it names blockID.
func (s *Store) EndImport(ctx context.Context, master, slave, blockID string) error {
	return s.submit(ctx, cmdImport, importCmd{At: s.now(), Conn: Connection{MasterSAE: master, SlaveSAE: slave}.ID(), Block: blockID, Done: true}).err
}
