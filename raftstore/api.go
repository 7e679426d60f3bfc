// Package raftstore is a KME site's replicated state: connections, key pools,
// key assignments and counters, held in a Raft-replicated FSM (hashicorp/raft
// with raft-boltdb/v2) with key material encrypted before it enters Raft.
//
// This file is the contract other packages build on. The Store type in
// store.go implements Site.
package raftstore

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/hashicorp/raft"
)

// Sentinel errors returned by Site methods. Callers compare with errors.Is.
var (
	// ErrNotLeader: this node is not the leader; the caller forwards to Leader().
	ErrNotLeader = errors.New("raftstore: not the leader")
	// ErrNoLeader: the site has no leader at the moment (election in progress
	// or minority partition).
	ErrNoLeader = errors.New("raftstore: no leader")
	// ErrConnectionExists: a connection for this master/slave pair exists with
	// different parameters.
	ErrConnectionExists = errors.New("raftstore: connection already exists")
	// ErrConnectionNotFound: no connection for this master/slave pair.
	ErrConnectionNotFound = errors.New("raftstore: connection not found")
	// ErrInsufficientKeys: the pool holds fewer bits than the request needs.
	// Nothing was carved.
	ErrInsufficientKeys = errors.New("raftstore: insufficient key material")
	// ErrKeyNotFound: one or more key IDs are unknown (never issued, already
	// erased or burned). Nothing was consumed.
	ErrKeyNotFound = errors.New("raftstore: key not found")
	// ErrNotAuthorized: the caller is not a slave still named for one of the
	// keys. Nothing was consumed.
	ErrNotAuthorized = errors.New("raftstore: caller not authorized for key")
	// ErrInvalid: the command is malformed (bad sizes, duplicate IDs, ...).
	ErrInvalid = errors.New("raftstore: invalid command")
	// ErrBlockExists: a block with this ID was already added to the pool.
	ErrBlockExists = errors.New("raftstore: block already exists")
	// ErrOutcomeUnknown: the command was handed to Raft and then leadership
	// was lost (raft.ErrLeadershipLost) or the caller's context ended, so it
	// may or may not commit. Never relabel it as not-leader: a caller may
	// retry only a command that is idempotent (same request ID, same block
	// ID) and must otherwise treat what the command would have produced as
	// burned (README "burned"; docs/RAFT-FORMAT.md "Outcome unknown").
	ErrOutcomeUnknown = errors.New("raftstore: outcome unknown")
	// ErrNotEnabled: the command needs a cluster version the site has not
	// reached (some member runs an older binary). Refused before it is
	// proposed; nothing changed (docs/RAFT-FORMAT.md "Cluster version").
	ErrNotEnabled = errors.New("raftstore: command not enabled by the cluster version")
	// ErrUpgradeRequired: this node's log holds an entry its binary cannot
	// apply, so its state stopped at the entry before. It refuses to serve
	// until it runs a binary that knows the entry (docs/RAFT-FORMAT.md
	// "Unknown commands").
	ErrUpgradeRequired = errors.New("raftstore: this node must be upgraded")
)

// Connection is a registered master→slave key relationship (README, etsi/API.md).
// Its identity is the (MasterSAE, SlaveSAE) pair. Sizes are in bits.
type Connection struct {
	SourceKME        string `json:"source_KME_ID"`
	TargetKME        string `json:"target_KME_ID"`
	MasterSAE        string `json:"master_SAE_ID"`
	SlaveSAE         string `json:"slave_SAE_ID"`
	KeySize          int    `json:"key_size"`
	MaxKeyCount      int    `json:"max_key_count"`
	MaxKeyPerRequest int    `json:"max_key_per_request"`
	MaxSAEIDCount    int    `json:"max_SAE_ID_count"`
	MinKeySize       int    `json:"min_key_size"`
	MaxKeySize       int    `json:"max_key_size"`
	Priority         int    `json:"priority"`
}

// ID is the connection's identity, "master|slave".
func (c Connection) ID() string { return c.MasterSAE + "|" + c.SlaveSAE }

// ConnectionStatus is a connection plus its pool level, from committed state.
type ConnectionStatus struct {
	Connection
	StoredBits  int64 `json:"stored_bits"`  // unassigned bits in the pool
	StoredKeys  int64 `json:"stored_keys"`  // StoredBits / KeySize
	IssuedKeys  int64 `json:"issued_keys"`  // keys assigned and not yet erased
	BurnedKeys  int64 `json:"burned_keys"`  // keys burned over the connection's life
	ErasedKeys  int64 `json:"erased_keys"`  // keys fetched by every slave and erased
	AddedBlocks int64 `json:"added_blocks"` // blocks added over the connection's life
	// PendingImport is the block whose import at both sites is half done
	// (BeginImport without EndImport), "" when none.
	PendingImport string `json:"pending_import,omitempty"`
	// RelayPending is the relayed block on its way from this (source) site,
	// started and not yet ended (RelayStart, RelayDone / RelayDiscard).
	RelayPending string `json:"relay_pending,omitempty"`
	// Relay counts the relayed blocks this source site ended: done (their
	// bits and the relay key their hops used) and burned.
	Relay RelayCounts `json:"relay"`
}

// NeedBytes is how much key the connection's pool can still take before it
// holds max_key_count keys (0 when full).
func (c ConnectionStatus) NeedBytes() int {
	missing := int64(c.MaxKeyCount)*int64(c.KeySize) - c.StoredBits
	if missing <= 0 {
		return 0
	}
	return int((missing + 7) / 8)
}

// Block is final key material for one connection's pool, identical at both
// sites and identified by an ID both sites agreed on.
type Block struct {
	ConnectionID string
	BlockID      string
	Bits         []byte // plaintext; len*8 bits. Encrypted by the store before Raft.
	// LinkPeer, when set, marks a block produced by the QKD link with that
	// peer KME: the block becomes the link's last block (see LinkState) and
	// AuthBits (plaintext, may be empty) are appended to the link's
	// authentication pad stream in the same commit. Bits may then be empty
	// (everything went to the pad stream).
	LinkPeer string
	AuthBits []byte
	// RelayBits (plaintext, may be empty; only with LinkPeer) are appended
	// to the link's relay streams, key reserved for one-time-pad relaying:
	// the first RelaySplit bytes to direction 0, the rest to direction 1
	// (RelayDir, relay.go). A block with relay bits needs cluster version
	// 4. ConnectionID may be empty when Bits is (a link block of pad and
	// relay material only).
	RelayBits  []byte
	RelaySplit int
}

// LinkState is a QKD link's replicated bookkeeping at this site (per peer
// KME): the last two link blocks committed here (for the sites' history
// check), the pad offset reserved so far and the bytes of authentication
// pad material sessions added.
type LinkState struct {
	Peer        string `json:"peer"`
	LastBlock   string `json:"last_block"`
	PrevBlock   string `json:"prev_block"`
	PadOffset   uint64 `json:"pad_offset"`   // opaque to the store; only moves forward
	StreamBytes uint64 `json:"stream_bytes"` // pad material bytes ever added (minus dropped blocks)
	PadsFrom    uint64 `json:"pads_from"`    // stream bytes below this were released (erased)
	// Relay is the relay key per direction (RelayDir; relay.go).
	Relay [2]RelayStream `json:"relay"`
	// RelayEnabled: the site's cluster version accepts relay material.
	RelayEnabled bool `json:"relay_enabled"`
}

// IssueRequest asks the master site to carve Number keys of Size bits off a
// connection's pool head. KeyIDs are chosen by the caller (the leader, before
// Apply) so that Apply stays deterministic; len(KeyIDs) == Number.
type IssueRequest struct {
	RequestID string // idempotency: a retried request with the same ID returns the first result
	MasterSAE string
	SlaveSAE  string
	Slaves    []string  // every slave named: SlaveSAE first, then additional slaves
	Size      int       // bits, multiple of 8
	KeyIDs    []string  // canonical UUIDs
	IssuedAt  time.Time // chosen by the leader
}

// Key is one key handed to an SAE. Bits is plaintext, in memory only.
type Key struct {
	KeyID string
	Bits  []byte
}

// KeyRange locates one key inside a connection's pool stream: the bit offset
// of its first bit in the stream of all blocks ever added, and its length.
type KeyRange struct {
	KeyID  string `json:"key_ID"`
	Offset int64  `json:"offset"`
	Bits   int    `json:"bits"`
}

// Assignment is what the master site relays to the slave site after issuing:
// which ranges of the shared pool stream became which key IDs, and who may
// fetch them.
type Assignment struct {
	RequestID string     `json:"request_id"`
	MasterSAE string     `json:"master_SAE_ID"`
	SlaveSAE  string     `json:"slave_SAE_ID"`
	Slaves    []string   `json:"slaves"`
	Keys      []KeyRange `json:"keys"`
	IssuedAt  time.Time  `json:"issued_at"`
}

// Issued is the result of IssueKeys: the keys for the master SAE and the
// assignment to relay to the slave site.
type Issued struct {
	Keys       []Key
	Assignment Assignment
}

// ConsumeRequest is a slave SAE fetching keys by ID at the slave site.
type ConsumeRequest struct {
	RequestID string
	Caller    string   // the slave SAE ID from its certificate
	MasterSAE string   // the master named in the dec_keys path
	KeyIDs    []string // canonical UUIDs, no duplicates
}

// Site is the replicated site state as the rest of the system sees it.
// Write methods must run on the leader: elsewhere they return ErrNotLeader
// (or ErrNoLeader) without side effects, and the caller forwards.
// Read methods answer from the leader's committed state (after a barrier /
// VerifyLeader) and also return ErrNotLeader on followers.
type Site interface {
	// RegisterConnection creates a connection, or succeeds without change when
	// an identical one exists; ErrConnectionExists when it differs.
	RegisterConnection(ctx context.Context, c Connection) error
	// DeleteConnection removes a connection and burns its pool.
	DeleteConnection(ctx context.Context, master, slave string) error
	// AddBlock appends a block to a connection's pool.
	AddBlock(ctx context.Context, b Block) error
	// IssueKeys carves, names and assigns keys in one commit (master site).
	IssueKeys(ctx context.Context, r IssueRequest) (Issued, error)
	// RecordAssignment commits an assignment relayed by the master site
	// (slave site). Idempotent on Assignment.RequestID.
	RecordAssignment(ctx context.Context, a Assignment) error
	// ConsumeKeys returns the keys to a named slave and erases each key once
	// every named slave fetched it. All or nothing.
	ConsumeKeys(ctx context.Context, r ConsumeRequest) ([]Key, error)
	// BurnKeys makes keys unfetchable forever and counts them as burned.
	// Unknown IDs are ignored.
	BurnKeys(ctx context.Context, keyIDs []string) error
	// BeginImport records that blockID's import at both sites is under way
	// on connection master→slave (ConnectionStatus.PendingImport), so any
	// later leader continues it; EndImport clears the record if it still
	// names blockID. Both need cluster version 2 (ErrNotEnabled before).
	BeginImport(ctx context.Context, master, slave, blockID string) error
	EndImport(ctx context.Context, master, slave, blockID string) error

	// Connection returns one connection's status.
	Connection(ctx context.Context, master, slave string) (ConnectionStatus, error)
	// Connections lists all connections' status.
	Connections(ctx context.Context) ([]ConnectionStatus, error)
	// LocalConnection reads one connection from this node's applied state,
	// on any node, without a leader check: it may lag the leader. Use it for
	// hints (request validation the FSM repeats), never for answers.
	LocalConnection(master, slave string) (ConnectionStatus, error)

	// IsLeader reports whether this node is the leader right now.
	IsLeader() bool
	// Leader returns the leader's Raft server ID and address, "" when none.
	Leader() (id, addr string)
	// Digest is a hash of the FSM's committed state (equal on every node
	// that applied the same log index).
	Digest() (index uint64, digest string)

	// The cluster version (docs/RAFT-FORMAT.md "Cluster version"): node/kme
	// sends each node's NodeID and SupportedVersion to the leader, whose
	// ReportVersion raises the cluster version once every member of the
	// configuration supports a higher one. ClusterVersion reads this node's
	// applied state.
	NodeID() string
	SupportedVersion() uint8
	ClusterVersion() uint8
	ReportVersion(ctx context.Context, id string, version uint8) error
}

// Config opens a Store (see Open in store.go).
type Config struct {
	NodeID  string // Raft server ID, unique in the site
	DataDir string // raft.db (raft-boltdb), snapshots/; created 0700, snapshot directories too
	// Transport carries Raft traffic; node supplies one over mutual TLS.
	// Tests may use raft.NewInmemTransport or raft.NewTCPTransport.
	Transport raft.Transport
	// KEK is the site key-encryption key, 32 bytes, identical on every node
	// of the site (see LoadKEK).
	KEK []byte
	// Bootstrap, when non-empty and the data dir holds no Raft state,
	// bootstraps the site with these voters. Every node of a static site
	// passes the same list; a node that will be joined later passes none.
	Bootstrap []raft.Server
	// Logger for store and Raft messages; nil means slog.Default().
	Logger *slog.Logger
	// NoSync disables fsync in the log store (tests and benchmarks only).
	NoSync bool
	// Raft timing; zero values take hashicorp/raft's defaults.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	SnapshotThreshold  uint64
	SnapshotInterval   time.Duration
	TrailingLogs       uint64
	// CommitTimeout: how long the leader waits before sending an
	// AppendEntries heartbeat carrying the commit index; zero takes the
	// default (50ms).
	CommitTimeout time.Duration
	// RaftLogLevel is hashicorp/raft's log level ("trace" … "error");
	// empty means "warn".
	RaftLogLevel string
	// MaxVersion is the highest cluster version this node supports; zero
	// means MaxVersion. Tests set a lower one to play an older binary.
	MaxVersion uint8
	// Now is the leader's clock for the timestamps put into commands
	// (request-table aging, default IssuedAt); nil means time.Now. Tests
	// use it to move time forward.
	Now func() time.Time
}

// Membership and lifecycle beyond Site, used by node.
type Admin interface {
	Site
	// Join adds a voter (leader only; ErrNotLeader elsewhere).
	Join(ctx context.Context, id, addr string) error
	// Remove removes a server (leader only).
	Remove(ctx context.Context, id string) error
	// Servers lists the current configuration.
	Servers(ctx context.Context) ([]raft.Server, error)
	// LeaderChanges delivers true when this node becomes leader (after a
	// barrier, so its FSM is up to date) and false when it stops being
	// leader. Each call returns a new subscription; cancel ctx to end it.
	LeaderChanges(ctx context.Context) <-chan bool
	// Stats for metrics: raft state, term, last index, commit latency, ...
	Stats() map[string]string
	// Shutdown hands leadership to another voter when leader, then stops.
	Shutdown(ctx context.Context) error
}
