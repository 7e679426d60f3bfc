package etsi

import (
	"context"
	"errors"
)

// Backend is what the ETSI handlers need from a KME. The node package
// implements it on top of the replicated site store, forwarding to the
// leader and relaying to the peer site; tests implement it in memory.
// All sizes are in bits.
//
// Every method either fully succeeds or changes no state. Errors are the
// sentinels below (wrapped with %w is fine); anything else maps to 503.
type Backend interface {
	// KMEID is this site's KME ID.
	KMEID() string
	// Connection returns the connection between master and slave as seen
	// by this site, with its pool level. ErrUnknownSAE when none exists.
	Connection(ctx context.Context, master, slave string) (ConnectionInfo, error)
	// EncKeys issues keys to the master SAE (master site only).
	EncKeys(ctx context.Context, r EncRequest) ([]Key, error)
	// DecKeys hands keys to a slave SAE named for them (slave site only).
	DecKeys(ctx context.Context, r DecRequest) ([]Key, error)
	// RegisterConnection registers a connection at both sites (seed API).
	RegisterConnection(ctx context.Context, c ConnectionInfo) error
	// ConnectionsOf lists the connections in which sae is the master or a
	// slave (seed API: get_key by slave_host or key_id).
	ConnectionsOf(ctx context.Context, sae string) ([]ConnectionInfo, error)
}

// LimitsBackend is an optional Backend extension: Limits returns the
// connection's parameters for validating an enc_keys request, possibly from
// a local, slightly stale copy (no leader round trip, no forwarding hop).
// The backend must re-check everything authoritatively when it issues.
// Handlers use Connection when a Backend does not implement it.
type LimitsBackend interface {
	Limits(ctx context.Context, master, slave string) (ConnectionInfo, error)
}

// Sentinel errors a Backend returns.
var (
	// ErrUnknownSAE: no connection between these SAEs at this KME (401).
	ErrUnknownSAE = errors.New("etsi: unknown SAE")
	// ErrUnauthorized: the caller may not fetch these keys (401).
	ErrUnauthorized = errors.New("etsi: unauthorized")
	// ErrKeysNotFound: one or more key IDs are not on this KME (400).
	ErrKeysNotFound = errors.New("etsi: keys not found")
	// ErrInsufficientKeys: fewer keys stored than asked for (503).
	ErrInsufficientKeys = errors.New("etsi: insufficient keys")
	// ErrUnavailable: no leader, peer site unreachable, timeout (503).
	ErrUnavailable = errors.New("etsi: service unavailable")
	// ErrConflict: a connection with different parameters exists (400).
	ErrConflict = errors.New("etsi: conflicting connection")
	// ErrBadRequest: the backend refused the request as invalid (400).
	ErrBadRequest = errors.New("etsi: bad request")
)

// ConnectionInfo is a connection and its pool level at this site.
type ConnectionInfo struct {
	SourceKME        string
	TargetKME        string
	MasterSAE        string
	SlaveSAE         string
	KeySize          int
	MaxKeyCount      int
	MaxKeyPerRequest int
	MaxSAEIDCount    int
	MinKeySize       int
	MaxKeySize       int
	Priority         int
	StoredKeyCount   int // keys of KeySize that the pool can still yield
}

// EncRequest is a validated enc_keys call.
type EncRequest struct {
	MasterSAE  string   // caller, from its certificate
	SlaveSAE   string   // from the path
	Additional []string // additional_slave_SAE_IDs, validated
	Number     int
	Size       int
}

// DecRequest is a validated dec_keys call.
//
// Seed marks a call from the unauthenticated seed-compatibility API
// (GET /get_key?key_id=…): SlaveSAE and MasterSAE are then empty and each
// key is handed out on behalf of its primary slave (the slave SAE of the
// connection it was issued on, i.e. the path SAE of the enc_keys call);
// additional slaves of a multicast key keep their share. A Backend must
// refuse (ErrUnauthorized) a request with an empty SlaveSAE unless Seed is
// set, so a zero value never bypasses the owner check.
type DecRequest struct {
	SlaveSAE  string   // caller, from its certificate ("" only when Seed)
	MasterSAE string   // from the path ("" only when Seed)
	KeyIDs    []string // canonical lowercase UUIDs, no duplicates, at least one
	Seed      bool     // seed API: act for each key's primary slave
}

// Key is a key handed to an SAE.
type Key struct {
	KeyID string
	Bits  []byte
}
