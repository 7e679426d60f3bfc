// Package kme is a KME site's ETSI backend on top of the replicated site
// store: it runs every call on the site's Raft leader (forwarding from
// followers over node-to-node mTLS, never redirecting), and speaks the
// inter-KME protocol with peer sites: connection registration at both
// sites, relaying key assignments from the master site to the slave site
// (grouped into batches), burning keys whose relay failed, and importing
// identical key blocks at both sites.
//
// Internal HTTP endpoints, served by InternalHandler under /internal/. All
// are POST with a JSON body (unknown fields and trailing data refused) and
// need a verified client certificate with a kme:<KME ID> URI SAN: no such
// identity → 401, the wrong one → 403. Errors answer
// {"code": ..., "message": ...}; code is one of not_leader (421),
// no_leader, unavailable, insufficient_keys (503), unknown_sae,
// unauthorized (401), keys_not_found, conflict, bad_request (400),
// forbidden (403). The code, not the status, carries the error across hops.
// A caller's remaining time travels in X-Qkdkms-Deadline-Ms.
//
//	/internal/v1/forward/{op}   callers: this site's nodes. Runs op on this
//	    node if it leads, else answers not_leader (the caller retries at the
//	    leader). ops and bodies → answers:
//	      connection      {"master_SAE_ID","slave_SAE_ID"} → ConnectionInfo
//	      connections_of  {"SAE_ID"} → [ConnectionInfo]
//	      enc_keys        EncRequest fields + "request_id" → [{"KeyID","Bits"(base64)}]
//	      dec_keys        DecRequest fields + "request_id" → [{"KeyID","Bits"}]
//	      register_connection  ConnectionInfo → {}
//	      import_block    {"master_SAE_ID","slave_SAE_ID","block_id","bits"} → {}
//	      and the peer ops below (a peer call that reached a follower).
//	    (etsi.EncRequest/DecRequest/ConnectionInfo travel with their Go
//	    field names.)
//	/internal/v1/peer/{op}      callers: configured peer sites. Runs op on
//	    this site's leader (forwarding from a follower); a follower names the
//	    leader's URL in X-Qkdkms-Leader so the peer goes there next time.
//	      assignments {"assignments":[raftstore.Assignment]} → {"results":[code or ""]}
//	                  (RecordAssignment of each, in order per connection)
//	      burn        {"key_IDs":[...]} → {}
//	      register    {"connection": raftstore.Connection} → {}
//	      block       {"master_SAE_ID","slave_SAE_ID","block_id","bits"} → {}
//	      status      {"master_SAE_ID","slave_SAE_ID"} → raftstore.ConnectionStatus
//	      delete      {"master_SAE_ID","slave_SAE_ID"} → {"deleted"} (DeleteConnection)
//	    The peer's identity comes from its certificate and must be the
//	    source (assignments) or the other end (register, block) of each
//	    connection named.
//	/internal/v1/admin/blocks   callers: this site's nodes or operators
//	    (kme-admin:<KME ID>). {"master_SAE_ID","slave_SAE_ID","block_id",
//	    "bits"(base64)} → {"block_id","bits"(count)}; see ImportBlock.
//	    AdminHandler serves the same for node to mount at /admin/v1/blocks.
package kme

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"qkdkms/etsi"
	"qkdkms/node/forward"
	"qkdkms/raftstore"
)

// Config configures a KME.
type Config struct {
	// KMEID is this site's KME ID (the kme: identity in its node certificates).
	KMEID string
	// Site is this node's view of the replicated site store.
	Site raftstore.Site
	// Peers maps each peer site's KME ID to the HTTPS addresses of its nodes
	// ("host:port" or "https://host:port").
	Peers map[string][]string
	// HTTPClient carries forwarding and peer calls; it must present this
	// node's certificate (mTLS) and trust the CA of this site and its peers.
	HTTPClient *http.Client
	// ResolveAddr maps a Raft server address of this site to the HTTPS
	// address of that node. Nil means identity (Raft and HTTPS share a port).
	ResolveAddr func(raftAddr string) string
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Issued, when set, is told how many keys enc_keys issued on this
	// node (the leader) for a connection (metrics).
	Issued func(master, slave string, n int)

	// CallTimeout bounds a call whose context has no deadline (default 10s).
	CallTimeout time.Duration
	// RelayTimeout bounds one relay of assignments to the slave site
	// (default 3s, and never past the caller's deadline).
	RelayTimeout time.Duration
	// RelayWorkers is the number of relay requests in flight per peer site
	// (default 8). Each request carries every assignment queued meanwhile.
	RelayWorkers int
	// MaxRelayBatch caps the assignments in one relay request (default 512).
	MaxRelayBatch int
	// MaxConnections caps the connections this site holds (default
	// DefaultMaxConnections): registering another one, from an SAE or a
	// peer site, is refused with forward.ErrConnectionLimit.
	MaxConnections int
	// PeerOps are peer-site calls another package serves (the trusted-node
	// relay, node/network): POST /internal/v1/peer/{op} from a configured
	// peer runs PeerOps[op] on this site's leader (forwarded like every
	// peer call). CallPeer makes such calls.
	PeerOps map[string]PeerOp
}

// PeerOp serves a peer site's call on the leader: from is the calling
// site's KME ID (from its verified certificate), body the JSON request;
// the result is answered as JSON, an error as the internal error body.
type PeerOp func(ctx context.Context, from string, body json.RawMessage) (any, error)

// DefaultMaxConnections is MaxConnections when unset.
const DefaultMaxConnections = 64

// KME implements etsi.Backend for one node of a site.
type KME struct {
	id      string
	site    raftstore.Site
	client  *http.Client
	resolve func(string) string
	log     *slog.Logger
	cfg     Config

	peers map[string]*peer

	connMu    sync.Mutex
	connCache map[string]cachedConn

	regMu sync.Mutex // serializes registrations started here (the connection cap)

	importMu sync.Mutex // serializes block imports here; the half-done import is in the site state (ConnectionStatus.PendingImport)

	reqMu    sync.Mutex
	inflight map[string]*encCall  // enc_keys request IDs being served here
	burned   map[string]time.Time // enc_keys request IDs whose keys were burned

	closeOnce sync.Once
	done      chan struct{}
	wg        sync.WaitGroup
}

type cachedConn struct {
	c  raftstore.Connection
	at time.Time
}

// connCacheTTL bounds how long the leader trusts a cached connection's
// roles (source/target KME) for routing checks. Pool levels are never cached.
const connCacheTTL = 2 * time.Second

var _ etsi.Backend = (*KME)(nil)

// New builds a KME and starts its relay workers. Call Close to stop them.
func New(cfg Config) *KME {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	if cfg.ResolveAddr == nil {
		cfg.ResolveAddr = func(a string) string { return a }
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 10 * time.Second
	}
	if cfg.RelayTimeout <= 0 {
		cfg.RelayTimeout = 3 * time.Second
	}
	if cfg.RelayWorkers <= 0 {
		cfg.RelayWorkers = 8
	}
	if cfg.MaxRelayBatch <= 0 {
		cfg.MaxRelayBatch = 512
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	k := &KME{
		id:        cfg.KMEID,
		site:      cfg.Site,
		client:    cfg.HTTPClient,
		resolve:   cfg.ResolveAddr,
		log:       cfg.Logger.With("kme", cfg.KMEID),
		cfg:       cfg,
		peers:     map[string]*peer{},
		connCache: map[string]cachedConn{},
		inflight:  map[string]*encCall{},
		burned:    map[string]time.Time{},
		done:      make(chan struct{}),
	}
	for id, addrs := range cfg.Peers {
		p := &peer{kme: k, id: id}
		for _, a := range addrs {
			p.addrs = append(p.addrs, baseURL(a))
		}
		k.peers[id] = p
		for i := 0; i < cfg.RelayWorkers; i++ {
			q := make(chan *relayItem, 2*cfg.MaxRelayBatch)
			p.queues = append(p.queues, q)
			k.wg.Add(1)
			go p.relayWorker(q)
		}
	}
	k.wg.Add(1)
	go k.reportVersion()
	return k
}

// opReportVersion forwards a node's supported cluster version to the
// leader (/internal/v1/forward/report_version).
const opReportVersion = "report_version"

// versionArgs is a node's version report.
type versionArgs struct {
	Node    string `json:"node"`
	Version uint8  `json:"version"`
}

// Version report timing: retries back off from reportRetry to reportBackoff;
// while the cluster version is below this node's, it reports every
// reportEvery, well within the leader's 30 s report lifetime.
const (
	reportRetry   = 20 * time.Millisecond
	reportBackoff = 500 * time.Millisecond // a fresh site enables new commands soon after its election
	reportEvery   = 5 * time.Second
)

// reportVersion sends this node's supported cluster version to the leader
// while the site's cluster version is below it, so the leader raises the
// cluster version once every node runs a binary that supports it
// (docs/RAFT-FORMAT.md "Cluster version"). Reports travel the forwarding
// path like any write.
func (k *KME) reportVersion() {
	defer k.wg.Done()
	delay := reportRetry
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		select {
		case <-k.done:
			return
		case <-timer.C:
		}
		in := versionArgs{Node: k.site.NodeID(), Version: k.site.SupportedVersion()}
		if k.site.ClusterVersion() >= in.Version {
			timer.Reset(reportEvery)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), k.cfg.CallTimeout)
		_, err := onLeader(ctx, k, opReportVersion, in, noResult((*KME).localReportVersion))
		cancel()
		if err != nil {
			k.log.Debug("version report failed", "version", in.Version, "err", err)
			delay = min(2*delay, reportBackoff)
		} else {
			delay = reportEvery
		}
		timer.Reset(delay)
	}
}

func (k *KME) localReportVersion(ctx context.Context, in versionArgs) error {
	return k.site.ReportVersion(ctx, in.Node, in.Version)
}

// Close stops the relay workers; queued relays fail with ErrUnavailable.
func (k *KME) Close() error {
	k.closeOnce.Do(func() { close(k.done) })
	k.wg.Wait()
	return nil
}

// KMEID is this site's KME ID.
func (k *KME) KMEID() string { return k.id }

// baseURL turns "host:port" into "https://host:port" and trims a trailing "/".
func baseURL(a string) string {
	a = strings.TrimRight(a, "/")
	if !strings.Contains(a, "://") {
		a = "https://" + a
	}
	return a
}

func newUUID() string {
	return uuid.Must(uuid.NewRandomFromReader(rand.Reader)).String()
}

// ---------------------------------------------------------------- conversion

func toInfo(s raftstore.ConnectionStatus) etsi.ConnectionInfo {
	c := s.Connection
	return etsi.ConnectionInfo{
		SourceKME:        c.SourceKME,
		TargetKME:        c.TargetKME,
		MasterSAE:        c.MasterSAE,
		SlaveSAE:         c.SlaveSAE,
		KeySize:          c.KeySize,
		MaxKeyCount:      c.MaxKeyCount,
		MaxKeyPerRequest: c.MaxKeyPerRequest,
		MaxSAEIDCount:    c.MaxSAEIDCount,
		MinKeySize:       c.MinKeySize,
		MaxKeySize:       c.MaxKeySize,
		Priority:         c.Priority,
		StoredKeyCount:   int(s.StoredKeys),
	}
}

func fromInfo(c etsi.ConnectionInfo) raftstore.Connection {
	return raftstore.Connection{
		SourceKME:        c.SourceKME,
		TargetKME:        c.TargetKME,
		MasterSAE:        c.MasterSAE,
		SlaveSAE:         c.SlaveSAE,
		KeySize:          c.KeySize,
		MaxKeyCount:      c.MaxKeyCount,
		MaxKeyPerRequest: c.MaxKeyPerRequest,
		MaxSAEIDCount:    c.MaxSAEIDCount,
		MinKeySize:       c.MinKeySize,
		MaxKeySize:       c.MaxKeySize,
		Priority:         c.Priority,
	}
}

func toETSIKeys(ks []raftstore.Key) []etsi.Key {
	out := make([]etsi.Key, len(ks))
	for i, k := range ks {
		out[i] = etsi.Key{KeyID: k.KeyID, Bits: k.Bits}
	}
	return out
}

// ---------------------------------------------------------------- Backend

// Connection returns the connection between master and slave with its pool
// level, from the leader's committed state.
func (k *KME) Connection(ctx context.Context, master, slave string) (etsi.ConnectionInfo, error) {
	return onLeader(ctx, k, opConnection, connArgs{Master: master, Slave: slave}, (*KME).localConnection)
}

var _ etsi.LimitsBackend = (*KME)(nil)

// Limits implements etsi.LimitsBackend: the connection from this node's
// applied state, without a leader round trip or a forwarding hop. The FSM
// re-checks every limit when it issues, so a copy that lags only changes
// which layer refuses a request. A connection not (yet) known here falls
// back to Connection.
func (k *KME) Limits(ctx context.Context, master, slave string) (etsi.ConnectionInfo, error) {
	if s, err := k.site.LocalConnection(master, slave); err == nil {
		return toInfo(s), nil
	}
	return k.Connection(ctx, master, slave)
}

func (k *KME) localConnection(ctx context.Context, in connArgs) (etsi.ConnectionInfo, error) {
	s, err := k.site.Connection(ctx, in.Master, in.Slave)
	if err != nil {
		return etsi.ConnectionInfo{}, err
	}
	k.remember(s.Connection)
	return toInfo(s), nil
}

// ConnectionsOf lists the connections in which sae is the master or the slave.
func (k *KME) ConnectionsOf(ctx context.Context, sae string) ([]etsi.ConnectionInfo, error) {
	return onLeader(ctx, k, opConnectionsOf, saeArgs{SAE: sae}, (*KME).localConnectionsOf)
}

func (k *KME) localConnectionsOf(ctx context.Context, in saeArgs) ([]etsi.ConnectionInfo, error) {
	all, err := k.site.Connections(ctx)
	if err != nil {
		return nil, err
	}
	out := []etsi.ConnectionInfo{}
	for _, s := range all {
		if s.MasterSAE == in.SAE || s.SlaveSAE == in.SAE {
			out = append(out, toInfo(s))
		}
	}
	return out, nil
}

// EncKeys issues keys to the master SAE: on the leader of the master site,
// one commit carves and names them, then the assignment is relayed to the
// slave site (grouped with concurrent ones). If the relay fails the keys are
// burned and the call answers ErrUnavailable (docs/ARCHITECTURE.md, "The
// enc_keys relay").
//
// The request ID is chosen once, at the node the SAE called, and travels
// with every forwarding attempt: when a leader lost its leadership while
// committing (raftstore.ErrOutcomeUnknown), the new leader's IssueKeys
// with the same ID returns the keys that commit carved, if it did, instead
// of carving new ones; if nobody retries, those keys are never handed out
// (burned, docs/RAFT-FORMAT.md "Outcome unknown").
func (k *KME) EncKeys(ctx context.Context, r etsi.EncRequest) ([]etsi.Key, error) {
	return onLeader(ctx, k, opEncKeys, encArgs{EncRequest: r, RequestID: newUUID()}, (*KME).localEncKeys)
}

// localEncKeys runs enc_keys on the leader. A request ID already being
// served here (a forwarding retry racing its first attempt) shares the
// first attempt's outcome; a request ID whose keys were burned is refused.
func (k *KME) localEncKeys(ctx context.Context, in encArgs) ([]etsi.Key, error) {
	if in.RequestID == "" {
		return nil, fmt.Errorf("%w: empty request ID", etsi.ErrBadRequest)
	}
	k.reqMu.Lock()
	if c, ok := k.inflight[in.RequestID]; ok {
		k.reqMu.Unlock()
		select {
		case <-c.done:
			return c.keys, c.err
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %v", etsi.ErrUnavailable, ctx.Err())
		}
	}
	if _, ok := k.burned[in.RequestID]; ok {
		k.reqMu.Unlock()
		return nil, fmt.Errorf("%w: request %s failed and its keys were burned", etsi.ErrUnavailable, in.RequestID)
	}
	c := &encCall{done: make(chan struct{})}
	k.inflight[in.RequestID] = c
	k.reqMu.Unlock()
	c.keys, c.err = k.encKeysOnce(ctx, in)
	if c.err == nil && k.cfg.Issued != nil {
		k.cfg.Issued(in.MasterSAE, in.SlaveSAE, len(c.keys))
	}
	k.reqMu.Lock()
	delete(k.inflight, in.RequestID)
	k.reqMu.Unlock()
	close(c.done)
	return c.keys, c.err
}

type encCall struct {
	done chan struct{}
	keys []etsi.Key
	err  error
}

// noteBurned remembers a burned request ID for a while (retries of it come
// within the caller's deadline).
func (k *KME) noteBurned(requestID string) {
	k.reqMu.Lock()
	defer k.reqMu.Unlock()
	now := time.Now()
	if len(k.burned) > 1024 {
		for id, at := range k.burned {
			if now.Sub(at) > time.Minute {
				delete(k.burned, id)
			}
		}
	}
	k.burned[requestID] = now
}

func (k *KME) encKeysOnce(ctx context.Context, in encArgs) ([]etsi.Key, error) {
	r := in.EncRequest
	if r.Number <= 0 || r.Size <= 0 || r.Size%8 != 0 {
		return nil, fmt.Errorf("%w: number and size must be positive, size a multiple of 8", etsi.ErrBadRequest)
	}
	c, err := k.connRoles(ctx, r.MasterSAE, r.SlaveSAE)
	if err != nil {
		return nil, err
	}
	if c.SourceKME != k.id {
		// The master SAE of this connection is served by the other site.
		return nil, fmt.Errorf("%w: %s is not a master SAE at %s", etsi.ErrUnknownSAE, r.MasterSAE, k.id)
	}
	p := k.peers[c.TargetKME]
	if p == nil {
		return nil, fmt.Errorf("%w: no route to slave site %s", etsi.ErrUnavailable, c.TargetKME)
	}
	slaves := append([]string{r.SlaveSAE}, r.Additional...)
	for _, s := range r.Additional {
		// Every additional slave must be served by the same target KME:
		// the master needs a connection to it that ends there.
		ac, err := k.connRoles(ctx, r.MasterSAE, s)
		if errors.Is(err, raftstore.ErrConnectionNotFound) || (err == nil && (ac.SourceKME != k.id || ac.TargetKME != c.TargetKME)) {
			return nil, fmt.Errorf("%w: additional slave %s is not connected to %s at %s", etsi.ErrBadRequest, s, r.MasterSAE, c.TargetKME)
		}
		if err != nil {
			return nil, err
		}
	}
	ids := make([]string, r.Number)
	for i := range ids {
		ids[i] = newUUID()
	}
	issued, err := k.site.IssueKeys(ctx, raftstore.IssueRequest{
		RequestID: in.RequestID,
		MasterSAE: r.MasterSAE,
		SlaveSAE:  r.SlaveSAE,
		Slaves:    slaves,
		Size:      r.Size,
		KeyIDs:    ids,
		IssuedAt:  time.Now().UTC(),
	})
	if err != nil {
		if errors.Is(err, raftstore.ErrConnectionNotFound) {
			k.forget(r.MasterSAE, r.SlaveSAE)
		}
		if errors.Is(err, raftstore.ErrKeyNotFound) {
			// A retried request whose keys were burned after a failed relay.
			return nil, fmt.Errorf("%w: %v", etsi.ErrUnavailable, err)
		}
		return nil, err
	}
	// From here on the keys exist: never report not-leader (that would make
	// the caller forward and issue again), only success or a burn.
	it, err := p.enqueue(ctx, issued.Assignment)
	if err == nil {
		err = p.wait(it)
	}
	if err != nil {
		k.noteBurned(in.RequestID)
		k.burnAfterFailedRelay(p, issued.Assignment, err)
		return nil, fmt.Errorf("%w: relay to %s failed, %d keys burned", etsi.ErrUnavailable, c.TargetKME, len(ids))
	}
	return toETSIKeys(issued.Keys), nil
}

// burnAfterFailedRelay burns the keys of a failed relay at this site (the
// keys were never handed out) and, best effort, at the slave site.
func (k *KME) burnAfterFailedRelay(p *peer, a raftstore.Assignment, cause error) {
	ids := make([]string, len(a.Keys))
	for i, kr := range a.Keys {
		ids[i] = kr.KeyID
	}
	k.log.Warn("relay failed, burning keys", "peer", p.id, "request_id", a.RequestID,
		"master", a.MasterSAE, "slave", a.SlaveSAE, "keys", len(ids), "err", cause)
	// The caller's context may be what expired: burn on a fresh one.
	ctx, cancel := context.WithTimeout(context.Background(), k.cfg.CallTimeout)
	defer cancel()
	if err := k.site.BurnKeys(ctx, ids); err != nil {
		// The keys stay assigned at this site but were never returned to
		// anyone and cannot be issued again: I1 holds, only stock is lost.
		k.log.Error("burn at master site failed", "request_id", a.RequestID, "keys", len(ids), "err", err)
	}
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), k.cfg.RelayTimeout)
		defer cancel()
		var out struct{}
		if err := p.call(ctx, opPeerBurn, burnArgs{From: k.id, KeyIDs: ids}, &out); err != nil {
			k.log.Info("best-effort burn at slave site failed", "peer", p.id, "request_id", a.RequestID, "err", err)
		}
	}()
}

// DecKeys hands keys to a slave SAE named for them (slave site).
// Like EncKeys, the request ID travels with every forwarding attempt, so a
// consume whose outcome was lost with a leader is answered from the
// store's request table rather than refused as already fetched.
func (k *KME) DecKeys(ctx context.Context, r etsi.DecRequest) ([]etsi.Key, error) {
	return onLeader(ctx, k, opDecKeys, decArgs{DecRequest: r, RequestID: newUUID()}, (*KME).localDecKeys)
}

func (k *KME) localDecKeys(ctx context.Context, in decArgs) ([]etsi.Key, error) {
	r := in.DecRequest
	if len(r.KeyIDs) == 0 {
		return nil, fmt.Errorf("%w: no key IDs", etsi.ErrKeysNotFound)
	}
	if in.RequestID == "" {
		return nil, fmt.Errorf("%w: empty request ID", etsi.ErrBadRequest)
	}
	if r.Seed {
		return k.seedDecKeys(ctx, in)
	}
	if r.SlaveSAE == "" || r.MasterSAE == "" {
		return nil, fmt.Errorf("%w: no caller", etsi.ErrUnauthorized)
	}
	keys, err := k.site.ConsumeKeys(ctx, raftstore.ConsumeRequest{
		RequestID: in.RequestID,
		Caller:    r.SlaveSAE,
		MasterSAE: r.MasterSAE,
		KeyIDs:    r.KeyIDs,
	})
	if err != nil {
		return nil, err
	}
	return toETSIKeys(keys), nil
}

// seedDecKeys serves the seed API's get_key by key_id, which names no
// caller: the keys are fetched on behalf of a slave they were issued to.
// The Site contract cannot look a key's owner up, so the connections that
// end at this site are tried in turn (slave SAE on behalf of master SAE);
// a refused attempt consumes nothing. The first attempt that does not find
// the key at all ends the search. Limitation: for a multicast key, the
// share consumed is that of the first named slave (in connection order)
// that has its own connection, not necessarily the primary slave's.
func (k *KME) seedDecKeys(ctx context.Context, in decArgs) ([]etsi.Key, error) {
	conns, err := k.site.Connections(ctx)
	if err != nil {
		return nil, err
	}
	for i, c := range conns {
		if c.TargetKME != k.id {
			continue
		}
		keys, err := k.site.ConsumeKeys(ctx, raftstore.ConsumeRequest{
			RequestID: fmt.Sprintf("%s/%d", in.RequestID, i),
			Caller:    c.SlaveSAE,
			MasterSAE: c.MasterSAE,
			KeyIDs:    in.KeyIDs,
		})
		switch {
		case err == nil:
			return toETSIKeys(keys), nil
		case errors.Is(err, raftstore.ErrNotAuthorized):
			continue
		default:
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: no slave at %s may still fetch these keys", etsi.ErrKeysNotFound, k.id)
}

// RegisterConnection registers a connection at both sites: the peer site
// first, then this one. Identical re-registration succeeds; a connection
// with other parameters at either site is ErrConflict. One of the two KMEs
// must be this site, the other a configured peer.
func (k *KME) RegisterConnection(ctx context.Context, ci etsi.ConnectionInfo) error {
	_, err := onLeader(ctx, k, opRegister, ci, noResult((*KME).localRegister))
	return err
}

func (k *KME) localRegister(ctx context.Context, ci etsi.ConnectionInfo) error {
	c := fromInfo(ci)
	var other string
	switch {
	case c.SourceKME == k.id && c.TargetKME != k.id:
		other = c.TargetKME
	case c.TargetKME == k.id && c.SourceKME != k.id:
		other = c.SourceKME
	default:
		return fmt.Errorf("%w: a connection joins this KME (%s) and a peer KME, got %q → %q",
			etsi.ErrBadRequest, k.id, c.SourceKME, c.TargetKME)
	}
	if c.MasterSAE == "" || c.SlaveSAE == "" || c.MasterSAE == c.SlaveSAE {
		return fmt.Errorf("%w: master and slave SAE IDs must be distinct and non-empty", etsi.ErrBadRequest)
	}
	p := k.peers[other]
	if p == nil {
		return fmt.Errorf("%w: %s is not a peer of %s", etsi.ErrBadRequest, other, k.id)
	}
	// A local conflict or the cap is refused before the peer is touched.
	k.regMu.Lock()
	defer k.regMu.Unlock()
	cur, err := k.site.Connection(ctx, c.MasterSAE, c.SlaveSAE)
	switch {
	case err == nil && cur.Connection != c:
		return fmt.Errorf("%w: %s already registered with other parameters", etsi.ErrConflict, c.ID())
	case err != nil && !errors.Is(err, raftstore.ErrConnectionNotFound):
		return err
	case err != nil:
		if err := k.checkCap(ctx); err != nil {
			return err
		}
	}
	var out struct{}
	if err := p.call(ctx, opPeerRegister, peerRegisterArgs{From: k.id, Connection: c}, &out); err != nil {
		if isRetryable(err) {
			// Not-leader from the peer must not make our caller forward.
			return fmt.Errorf("%w: register at %s: %v", etsi.ErrUnavailable, other, err)
		}
		return fmt.Errorf("register at %s: %w", other, err)
	}
	if err := k.site.RegisterConnection(ctx, c); err != nil {
		if errors.Is(err, raftstore.ErrNotLeader) || errors.Is(err, raftstore.ErrNoLeader) {
			// Safe to run again elsewhere: the peer registration is idempotent.
			return err
		}
		return err
	}
	k.remember(c)
	k.log.Info("connection registered", "master", c.MasterSAE, "slave", c.SlaveSAE, "source", c.SourceKME, "target", c.TargetKME)
	return nil
}

// checkCap refuses a new connection when the site holds MaxConnections.
// It runs on the leader before the register command; registrations started
// here are serialized (regMu), so only one that a peer site starts at the
// same moment can take the site one past the cap.
func (k *KME) checkCap(ctx context.Context) error {
	conns, err := k.site.Connections(ctx)
	if err != nil {
		return err
	}
	if len(conns) >= k.cfg.MaxConnections {
		return fmt.Errorf("%w: site %s holds %d connections, its max_connections; an operator must delete one first",
			forward.ErrConnectionLimit, k.id, len(conns))
	}
	return nil
}

// DeleteResult says where DeleteConnection found the connection.
type DeleteResult struct {
	KMEID  string `json:"kme_id"`
	Master string `json:"master_SAE_ID"`
	Slave  string `json:"slave_SAE_ID"`
	// Here and Peer are "deleted" or "absent"; PeerKME is the other site
	// ("" when the connection was absent here and at every peer).
	Here    string `json:"here"`
	PeerKME string `json:"peer_kme,omitempty"`
	Peer    string `json:"peer,omitempty"`
}

// DeleteConnection deletes the connection master→slave at this site, then
// at the other site, on this site's leader (elsewhere ErrNotLeader, nothing
// changed). Every key of the connection at each site is burned: its pool
// (blocks never carved), keys issued and not yet fetched by every slave,
// and the request table's answers for it; none is ever served again, and a
// connection registered again later starts with an empty pool. It is
// idempotent: absent at a site counts as done, so an operator runs it again
// when the peer site did not answer. A connection absent here is deleted at
// every configured peer that holds it (a delete the peer did not confirm).
func (k *KME) DeleteConnection(ctx context.Context, master, slave string) (DeleteResult, error) {
	res := DeleteResult{KMEID: k.id, Master: master, Slave: slave, Here: "absent"}
	cur, err := k.site.Connection(ctx, master, slave)
	var others []string
	switch {
	case err == nil:
		if err := k.site.DeleteConnection(ctx, master, slave); err != nil && !errors.Is(err, raftstore.ErrConnectionNotFound) {
			return res, err
		}
		k.forget(master, slave)
		res.Here = "deleted"
		k.log.Warn("connection deleted: its pool and unfetched keys are burned", "master", master, "slave", slave)
		others = []string{cur.SourceKME}
		if cur.SourceKME == k.id {
			others = []string{cur.TargetKME}
		}
	case errors.Is(err, raftstore.ErrConnectionNotFound):
		for id := range k.peers {
			others = append(others, id)
		}
	default:
		return res, err
	}
	for _, other := range others {
		p := k.peers[other]
		if p == nil {
			continue
		}
		var out peerDeleteResult
		if err := p.call(ctx, opPeerDelete, connArgs{From: k.id, Master: master, Slave: slave}, &out); err != nil {
			return res, fmt.Errorf("%w: deleted %s here (%s); site %s did not confirm, run the delete again: %w",
				etsi.ErrUnavailable, raftstore.Connection{MasterSAE: master, SlaveSAE: slave}.ID(), res.Here, other, err)
		}
		if out.Deleted || res.PeerKME == "" {
			res.PeerKME, res.Peer = other, "absent"
			if out.Deleted {
				res.Peer = "deleted"
			}
		}
	}
	return res, nil
}

// peerDeleteResult is a peer's answer to delete.
type peerDeleteResult struct {
	Deleted bool `json:"deleted"`
}

// localPeerDelete deletes a connection joining the calling peer site and
// this one (absent: nothing to do).
func (k *KME) localPeerDelete(ctx context.Context, in connArgs) (peerDeleteResult, error) {
	s, err := k.site.Connection(ctx, in.Master, in.Slave)
	if errors.Is(err, raftstore.ErrConnectionNotFound) {
		return peerDeleteResult{}, nil
	}
	if err != nil {
		return peerDeleteResult{}, err
	}
	c := s.Connection
	if !((c.SourceKME == in.From && c.TargetKME == k.id) || (c.TargetKME == in.From && c.SourceKME == k.id)) {
		return peerDeleteResult{}, fmt.Errorf("%w: connection %s does not join %s and %s", etsi.ErrUnauthorized, c.ID(), in.From, k.id)
	}
	if err := k.site.DeleteConnection(ctx, in.Master, in.Slave); err != nil && !errors.Is(err, raftstore.ErrConnectionNotFound) {
		return peerDeleteResult{}, err
	}
	k.forget(in.Master, in.Slave)
	k.log.Warn("connection deleted by the peer site: its pool and unfetched keys are burned", "from", in.From, "master", in.Master, "slave", in.Slave)
	return peerDeleteResult{Deleted: true}, nil
}

// ---------------------------------------------------------------- helpers

// connRoles returns a connection's static parameters, from a short-lived
// cache on the leader (roles and sizes do not change while a connection
// exists; pool levels are never served from here).
func (k *KME) connRoles(ctx context.Context, master, slave string) (raftstore.Connection, error) {
	id := raftstore.Connection{MasterSAE: master, SlaveSAE: slave}.ID()
	k.connMu.Lock()
	cc, ok := k.connCache[id]
	k.connMu.Unlock()
	if ok && time.Since(cc.at) < connCacheTTL {
		return cc.c, nil
	}
	s, err := k.site.Connection(ctx, master, slave)
	if err != nil {
		return raftstore.Connection{}, err
	}
	k.remember(s.Connection)
	return s.Connection, nil
}

func (k *KME) remember(c raftstore.Connection) {
	k.connMu.Lock()
	defer k.connMu.Unlock()
	if len(k.connCache) > 4096 {
		clear(k.connCache)
	}
	k.connCache[c.ID()] = cachedConn{c: c, at: time.Now()}
}

func (k *KME) forget(master, slave string) {
	k.connMu.Lock()
	defer k.connMu.Unlock()
	delete(k.connCache, raftstore.Connection{MasterSAE: master, SlaveSAE: slave}.ID())
}
