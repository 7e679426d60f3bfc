package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/hashicorp/raft"

	"qkdkms/etsi"
	"qkdkms/etsi/pki"
	"qkdkms/node/forward"
	"qkdkms/raftstore"
)

// Admin API (mTLS port, /admin/v1/...). Callers must present a certificate
// carrying kme:<this KME ID> (a node of this site) or kme-admin:<this KME ID>
// (an operator certificate, `qkdkms certs operator`); anyone else gets 403.
//
//	GET  /admin/v1/servers             → ServersResponse
//	POST /admin/v1/join   JoinRequest  → ServersResponse
//	POST /admin/v1/remove RemoveRequest → ServersResponse
//	GET  /admin/v1/digest              → DigestResponse (this node, not forwarded)
//	POST /admin/v1/connections/delete ConnDeleteRequest → kme.DeleteResult
//
// Membership changes run on the leader: a follower proxies the request to the
// leader over node-to-node mTLS (never a redirect) with the forwarder of
// package forward, the one the ETSI path uses: it retries while the answer
// is "not leader" / "no leader", until the caller's deadline (at most
// MaxAdminWait, sent as the remaining time in X-Qkdkms-Deadline-Ms). Errors
// are JSON AdminError bodies whose codes and statuses are forward.Table's.

// MaxAdminWait bounds how long an admin request waits for a leader.
const MaxAdminWait = 15 * time.Second

// Error codes in AdminError.Code: the wire codes of the one error table
// (forward.Table); these are the ones the admin API itself produces.
const (
	CodeNotLeader   = forward.CodeNotLeader
	CodeNoLeader    = forward.CodeNoLeader
	CodeBadRequest  = forward.CodeBadRequest
	CodeForbidden   = forward.CodeForbidden
	CodeUnavailable = forward.CodeUnavailable
	CodeInternal    = forward.CodeInternal
)

// JoinRequest adds a voter.
type JoinRequest struct {
	ID      string `json:"id"`
	Address string `json:"address"`
}

// RemoveRequest removes a server.
type RemoveRequest struct {
	ID string `json:"id"`
}

// Server is one member of the site's Raft configuration.
type Server struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	Suffrage string `json:"suffrage"`
	Leader   bool   `json:"leader"`
}

// ServersResponse lists the configuration as the leader sees it.
type ServersResponse struct {
	KMEID   string   `json:"kme_id"`
	Leader  string   `json:"leader"`
	Servers []Server `json:"servers"`
}

// ConnDeleteRequest deletes the connection master→slave at both sites.
type ConnDeleteRequest struct {
	Master string `json:"master_SAE_ID"`
	Slave  string `json:"slave_SAE_ID"`
}

// DigestResponse is one node's FSM digest at its applied index.
type DigestResponse struct {
	NodeID string `json:"node_id"`
	Index  uint64 `json:"index"`
	Digest string `json:"digest"`
}

// AdminError is the body of every non-2xx admin answer, {"code","message"}.
type AdminError = forward.Error

func (n *Node) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/v1/servers", func(w http.ResponseWriter, r *http.Request) {
		n.leaderDo(w, r, nil, func(ctx context.Context) (any, error) {
			// The leader's view: a follower's may lag a membership change.
			if !n.store.IsLeader() {
				return nil, raftstore.ErrNotLeader
			}
			return n.servers(ctx)
		})
	})
	adminPost(n, mux, "/admin/v1/join", adminBodyLimit, func(req JoinRequest) error {
		if err := checkName(req.ID); err != nil {
			return fmt.Errorf("id: %w", err)
		}
		if err := checkHostPort(req.Address, false); err != nil {
			return fmt.Errorf("address: %w", err)
		}
		return nil
	}, func(ctx context.Context, req JoinRequest) (any, error) {
		if err := n.store.Join(ctx, req.ID, req.Address); err != nil {
			return nil, err
		}
		n.logger.Info("node joined", "id", req.ID, "address", req.Address)
		return n.servers(ctx)
	})
	adminPost(n, mux, "/admin/v1/remove", adminBodyLimit, func(req RemoveRequest) error {
		if err := checkName(req.ID); err != nil {
			return fmt.Errorf("id: %w", err)
		}
		return nil
	}, func(ctx context.Context, req RemoveRequest) (any, error) {
		if err := n.store.Remove(ctx, req.ID); err != nil {
			return nil, err
		}
		n.logger.Info("node removed", "id", req.ID)
		return n.servers(ctx)
	})
	// Deleting a connection burns its pool and unfetched keys at both
	// sites (kme.DeleteConnection); repeating it is a no-op.
	adminPost(n, mux, "/admin/v1/connections/delete", adminBodyLimit, func(req ConnDeleteRequest) error {
		if !etsi.ValidSAEID(req.Master) || !etsi.ValidSAEID(req.Slave) || req.Master == req.Slave {
			return errors.New("master_SAE_ID and slave_SAE_ID: two distinct SAE IDs")
		}
		return nil
	}, func(ctx context.Context, req ConnDeleteRequest) (any, error) {
		return n.services.kme.DeleteConnection(ctx, req.Master, req.Slave)
	})
	// This node's own FSM digest (not forwarded): experiments compare the
	// digests of every node after healing.
	mux.HandleFunc("GET /admin/v1/digest", func(w http.ResponseWriter, r *http.Request) {
		index, digest := n.store.Digest()
		writeJSON(w, http.StatusOK, DigestResponse{NodeID: n.cfg.NodeID, Index: index, Digest: digest})
	})
	n.linkAdminRoutes(mux)
	n.networkAdminRoutes(mux)
	n.discoveryAdminRoutes(mux)
	n.backupAdminRoutes(mux)
	return n.requireAdmin(mux)
}

// requireAdmin admits nodes of this site and this site's operators.
func (n *Node) requireAdmin(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !n.isAdmin(r) {
			writeAdminError(w, http.StatusForbidden, CodeForbidden,
				fmt.Sprintf("admin endpoints need a certificate with kme:%s or kme-admin:%s", n.cfg.KMEID, n.cfg.KMEID))
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (n *Node) isAdmin(r *http.Request) bool {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return false
	}
	c := r.TLS.PeerCertificates[0]
	return pki.KMEID(c) == n.cfg.KMEID || pki.OperatorKME(c) == n.cfg.KMEID
}

func (n *Node) servers(ctx context.Context) (ServersResponse, error) {
	ss, err := n.store.Servers(ctx)
	if err != nil {
		return ServersResponse{}, err
	}
	leaderID, _ := n.store.Leader()
	out := ServersResponse{KMEID: n.cfg.KMEID, Leader: leaderID, Servers: make([]Server, 0, len(ss))}
	for _, s := range ss {
		out.Servers = append(out.Servers, Server{
			ID: string(s.ID), Address: string(s.Address), Suffrage: suffrage(s.Suffrage), Leader: string(s.ID) == leaderID,
		})
	}
	return out, nil
}

func suffrage(s raft.ServerSuffrage) string {
	switch s {
	case raft.Voter:
		return "voter"
	case raft.Nonvoter:
		return "nonvoter"
	default:
		return "staging"
	}
}

// adminBodyLimit bounds an admin request body unless its endpoint says
// otherwise.
const adminBodyLimit = 64 << 10

// adminPost serves POST pattern: a strict JSON Req of at most limit bytes,
// then check (nil: none; its error is a 400 with its text), then do on the
// site's leader (leaderDo).
func adminPost[Req any](n *Node, mux *http.ServeMux, pattern string, limit int64, check func(Req) error, do func(context.Context, Req) (any, error)) {
	mux.HandleFunc("POST "+pattern, func(w http.ResponseWriter, r *http.Request) {
		var req Req
		body, ok := decodeAdmin(w, r, &req, limit)
		if !ok {
			return
		}
		if check != nil {
			if err := check(req); err != nil {
				writeAdminError(w, http.StatusBadRequest, CodeBadRequest, err.Error())
				return
			}
		}
		n.leaderDo(w, r, body, func(ctx context.Context) (any, error) { return do(ctx, req) })
	})
}

// decodeAdmin decodes a strict JSON body of at most limit bytes.
func decodeAdmin(w http.ResponseWriter, r *http.Request, v any, limit int64) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		writeAdminError(w, http.StatusBadRequest, CodeBadRequest, "read body: "+err.Error())
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeAdminError(w, http.StatusBadRequest, CodeBadRequest, "malformed JSON: "+err.Error())
		return nil, false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeAdminError(w, http.StatusBadRequest, CodeBadRequest, "trailing data after the JSON object")
		return nil, false
	}
	return body, true
}

// leaderDo runs op on the site's leader through the one forwarder (package
// forward, shared with the ETSI path): locally when this node leads, else
// by proxying the request to the leader with the caller's remaining time,
// retrying on not-leader / no-leader until the caller's deadline (at most
// MaxAdminWait). The leader's answer is passed on as it is. A request that
// was itself forwarded is never forwarded again: it runs here or answers
// not_leader, and its sender retries.
func (n *Node) leaderDo(w http.ResponseWriter, r *http.Request, body []byte, op func(context.Context) (any, error)) {
	ctx, cancel := forward.Context(r, MaxAdminWait)
	defer cancel()
	var res any
	local := func(ctx context.Context) error {
		var err error
		res, err = op(ctx)
		return err
	}
	var err error
	if r.Header.Get(forward.ForwardedHeader) != "" {
		err = local(ctx)
	} else {
		var proxied []byte
		f := forward.Forwarder{Leader: n.adminLeader, Log: n.logger}
		err = f.Do(ctx, forward.Op{
			Name:  r.Method + " " + r.URL.Path,
			Local: local,
			Remote: func(ctx context.Context, base string) error {
				var err error
				proxied, err = n.forward(ctx, base, r, body)
				return err
			},
			// Every admin write is a no-op when repeated: joining a voter
			// already there at that address, removing one already gone,
			// installing the same name@version and sha256, choosing the
			// plugin already chosen, setting the same eavesdropper.
			Idempotent: true,
		})
		if err == nil && proxied != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(proxied)
			return
		}
	}
	if err != nil {
		forward.WriteError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// adminLeader is the forwarder's view of the site for admin requests: this
// node, or the leader's HTTPS base URL (Raft and HTTPS share the port).
func (n *Node) adminLeader() (bool, string) {
	if n.store.IsLeader() {
		return true, ""
	}
	if _, addr := n.store.Leader(); addr != "" && addr != n.cfg.Advertise {
		return false, "https://" + addr
	}
	return false, ""
}

// forward proxies one admin request to the leader at base and returns the
// body of its 200 answer; its error answers decode through the error table.
func (n *Node) forward(ctx context.Context, base string, r *http.Request, body []byte) ([]byte, error) {
	h := http.Header{forward.ForwardedHeader: {n.cfg.NodeID}}
	data, _, err := forward.Send(ctx, n.siteClient, r.Method, base+r.URL.RequestURI(), body, h)
	result := "ok"
	if forward.Retryable(err) || forward.OutcomeUnknown(err) {
		result = "retry"
	}
	n.metrics.forwarded.WithLabelValues(result).Inc()
	var te *forward.TransportError
	if errors.As(err, &te) {
		return nil, fmt.Errorf("node: forward to %s: %w", base, err)
	}
	return data, err // an error answer passes on as the leader wrote it
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"message":"encode response","code":"internal"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func writeAdminError(w http.ResponseWriter, status int, code, msg string) {
	forward.WriteCode(w, status, code, msg)
}
