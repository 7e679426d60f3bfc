package node

// Backup and restore (docs/OPERATIONS.md "Backup and restore"):
//
//	GET  /admin/v1/backup                      → BackupResponse (operators only; forwarded to the leader)
//	GET  /admin/v1/positions                   → PositionsResponse (forwarded to the leader)
//	POST /admin/v1/reconcile ReconcileRequest  → PositionsResponse (forwarded to the leader)
//
// RestoreDataDir seeds a new node's data directory from a backup file
// (`qkdkms restore`).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/hashicorp/raft"

	"qkdkms/etsi/pki"
	"qkdkms/node/forward"
	"qkdkms/raftstore"
)

// BackupResponse carries a sealed backup file and its header.
type BackupResponse struct {
	Header raftstore.BackupHeader `json:"header"`
	File   []byte                 `json:"file"` // the whole file, header included
}

// PositionsResponse is a site's pool positions (the leader's committed
// state) and the peer sites it has not reconciled with since a restore.
type PositionsResponse struct {
	KMEID   string                   `json:"kme_id"`
	Conns   []raftstore.PoolPosition `json:"conns"`
	Pending []string                 `json:"pending,omitempty"`
}

// ReconcileRequest ends a restored site's wait for Peer, given the peer
// site's own positions (its GET /admin/v1/positions answer).
type ReconcileRequest struct {
	Peer      string            `json:"peer"`
	Positions PositionsResponse `json:"positions"`
}

// maxBackupAnswer bounds a backup answer read by the admin client.
const maxBackupAnswer = 64 << 20

func (n *Node) backupAdminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /admin/v1/backup", func(w http.ResponseWriter, r *http.Request) {
		// Operators only; a node of the site only when it forwards an
		// operator's request to its leader.
		if !n.isOperator(r) && r.Header.Get(forward.ForwardedHeader) == "" {
			writeAdminError(w, http.StatusForbidden, CodeForbidden, "a backup needs an operator certificate (kme-admin:"+n.cfg.KMEID+")")
			return
		}
		n.leaderDo(w, r, nil, func(ctx context.Context) (any, error) {
			var buf bytes.Buffer
			h, err := n.store.Backup(ctx, n.cfg.KMEID, &buf)
			if err != nil {
				return nil, err
			}
			n.logger.Info("backup taken", "index", h.Index, "term", h.Term, "bytes", buf.Len(), "digest", h.Digest)
			return BackupResponse{Header: h, File: buf.Bytes()}, nil
		})
	})
	mux.HandleFunc("GET /admin/v1/positions", func(w http.ResponseWriter, r *http.Request) {
		n.leaderDo(w, r, nil, n.positions)
	})
	adminPost(n, mux, "/admin/v1/reconcile", 16<<20, func(req ReconcileRequest) error {
		if req.Peer == "" || req.Peer == n.cfg.KMEID || req.Positions.KMEID != req.Peer {
			return errors.New("peer: another site's KME ID, and positions: that site's GET /admin/v1/positions answer")
		}
		return nil
	}, func(ctx context.Context, req ReconcileRequest) (any, error) {
		var shared []raftstore.PoolPosition
		for _, p := range req.Positions.Conns {
			if p.Conn.SourceKME == n.cfg.KMEID || p.Conn.TargetKME == n.cfg.KMEID {
				shared = append(shared, p)
			}
		}
		if err := n.store.Reconcile(ctx, req.Peer, shared); err != nil {
			return nil, err
		}
		n.logger.Info("reconciled with peer site after restore", "peer", req.Peer, "connections", len(shared))
		return n.positions(ctx)
	})
}

func (n *Node) positions(ctx context.Context) (any, error) {
	conns, pending, err := n.store.Positions(ctx)
	if err != nil {
		return nil, err
	}
	return PositionsResponse{KMEID: n.cfg.KMEID, Conns: conns, Pending: pending}, nil
}

func (n *Node) isOperator(r *http.Request) bool {
	return r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && pki.OperatorKME(r.TLS.PeerCertificates[0]) == n.cfg.KMEID
}

// Backup takes a sealed backup of the site through its leader.
func (c *AdminClient) Backup(ctx context.Context) (BackupResponse, error) {
	var out BackupResponse
	err := c.doUpTo(ctx, maxBackupAnswer, http.MethodGet, "/admin/v1/backup", nil, &out)
	return out, err
}

// Positions returns the site's pool positions and pending peers.
func (c *AdminClient) Positions(ctx context.Context) (PositionsResponse, error) {
	var out PositionsResponse
	err := c.doUpTo(ctx, maxBackupAnswer, http.MethodGet, "/admin/v1/positions", nil, &out)
	return out, err
}

// Reconcile ends a restored site's wait for peer with the peer's positions.
func (c *AdminClient) Reconcile(ctx context.Context, peer string, peerPositions PositionsResponse) (PositionsResponse, error) {
	var out PositionsResponse
	err := c.doUpTo(ctx, maxBackupAnswer, http.MethodPost, "/admin/v1/reconcile", ReconcileRequest{Peer: peer, Positions: peerPositions}, &out)
	return out, err
}

// RestoreOptions seeds one node of a new site from a backup file.
type RestoreOptions struct {
	File    string // the backup file
	KMEID   string // the site's KME ID: the backup must be of this site
	KEK     []byte // the site KEK the backup was sealed under
	DataDir string // empty: no Raft state yet
	// Bootstrap is the new site's voters, node ID → advertised address,
	// the same on every node restored (as Config.Bootstrap).
	Bootstrap map[string]string
}

// RestoreDataDir verifies the backup (site, KEK, integrity, digest) and
// writes it into the empty data directory as the node's first snapshot.
// The node then starts with `qkdkms serve` on that directory and serves no
// key of a peer site until `qkdkms restore reconcile` ran for it.
func RestoreDataDir(opts RestoreOptions) (*raftstore.Backup, error) {
	f, err := os.Open(opts.File)
	if err != nil {
		return nil, fmt.Errorf("node: restore: %w", err)
	}
	defer f.Close()
	b, err := raftstore.OpenBackup(f, opts.KEK, opts.KMEID)
	if err != nil {
		return nil, err
	}
	if len(opts.Bootstrap) == 0 {
		return nil, fmt.Errorf("node: restore: the new site's voters (bootstrap) are required")
	}
	var servers []raft.Server
	for _, id := range sortedKeys(opts.Bootstrap) {
		if err := checkName(id); err != nil {
			return nil, fmt.Errorf("node: restore: bootstrap id %q: %w", id, err)
		}
		if err := checkHostPort(opts.Bootstrap[id], false); err != nil {
			return nil, fmt.Errorf("node: restore: bootstrap %s: %w", id, err)
		}
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(opts.Bootstrap[id])})
	}
	if err := raftstore.Restore(b, raftstore.RestoreConfig{DataDir: opts.DataDir, KEK: opts.KEK, Servers: servers}); err != nil {
		return nil, err
	}
	return b, nil
}
