package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	"qkdkms/etsi/pki"
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
//
// Membership changes run on the leader: a follower proxies the request to the
// leader over node-to-node mTLS (never a redirect), retrying only while the
// answer is "not leader" / "no leader", until the caller's deadline (at most
// MaxAdminWait). Errors are JSON AdminError bodies.

// MaxAdminWait bounds how long an admin request waits for a leader.
const MaxAdminWait = 15 * time.Second

// Header names used between nodes when forwarding.
const (
	headerForwarded = "X-Qkdkms-Forwarded-By"
	headerDeadline  = "X-Qkdkms-Deadline" // unix nanoseconds
)

// Error codes in AdminError.Code.
const (
	CodeNotLeader  = "not_leader"
	CodeNoLeader   = "no_leader"
	CodeBadRequest = "bad_request"
	CodeForbidden  = "forbidden"
	CodeInternal   = "internal"
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

// DigestResponse is one node's FSM digest at its applied index.
type DigestResponse struct {
	NodeID string `json:"node_id"`
	Index  uint64 `json:"index"`
	Digest string `json:"digest"`
}

// AdminError is the body of every non-2xx admin answer.
type AdminError struct {
	Message string `json:"message"`
	Code    string `json:"code"`
}

func (e *AdminError) Error() string { return e.Code + ": " + e.Message }

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
	mux.HandleFunc("POST /admin/v1/join", func(w http.ResponseWriter, r *http.Request) {
		var req JoinRequest
		body, ok := decodeAdmin(w, r, &req)
		if !ok {
			return
		}
		if err := checkName(req.ID); err != nil {
			writeAdminError(w, http.StatusBadRequest, CodeBadRequest, "id: "+err.Error())
			return
		}
		if err := checkHostPort(req.Address, false); err != nil {
			writeAdminError(w, http.StatusBadRequest, CodeBadRequest, "address: "+err.Error())
			return
		}
		n.leaderDo(w, r, body, func(ctx context.Context) (any, error) {
			if err := n.store.Join(ctx, req.ID, req.Address); err != nil {
				return nil, err
			}
			n.logger.Info("node joined", "id", req.ID, "address", req.Address)
			return n.servers(ctx)
		})
	})
	mux.HandleFunc("POST /admin/v1/remove", func(w http.ResponseWriter, r *http.Request) {
		var req RemoveRequest
		body, ok := decodeAdmin(w, r, &req)
		if !ok {
			return
		}
		if err := checkName(req.ID); err != nil {
			writeAdminError(w, http.StatusBadRequest, CodeBadRequest, "id: "+err.Error())
			return
		}
		n.leaderDo(w, r, body, func(ctx context.Context) (any, error) {
			if err := n.store.Remove(ctx, req.ID); err != nil {
				return nil, err
			}
			n.logger.Info("node removed", "id", req.ID)
			return n.servers(ctx)
		})
	})
	// This node's own FSM digest (not forwarded): experiments compare the
	// digests of every node after healing.
	mux.HandleFunc("GET /admin/v1/digest", func(w http.ResponseWriter, r *http.Request) {
		index, digest := n.store.Digest()
		writeJSON(w, http.StatusOK, DigestResponse{NodeID: n.cfg.NodeID, Index: index, Digest: digest})
	})
	n.linkAdminRoutes(mux)
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

func decodeAdmin(w http.ResponseWriter, r *http.Request, v any) ([]byte, bool) {
	return decodeAdminLimit(w, r, v, 64<<10)
}

// decodeAdminLimit decodes a strict JSON body of at most limit bytes.
func decodeAdminLimit(w http.ResponseWriter, r *http.Request, v any, limit int64) ([]byte, bool) {
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

// adminDeadline is the caller's deadline: the forwarding node's, if any,
// else now + MaxAdminWait; never later than now + MaxAdminWait.
func adminDeadline(r *http.Request) time.Time {
	d := time.Now().Add(MaxAdminWait)
	if v := r.Header.Get(headerDeadline); v != "" {
		if ns, err := strconv.ParseInt(v, 10, 64); err == nil {
			if t := time.Unix(0, ns); t.Before(d) {
				d = t
			}
		}
	}
	if t, ok := r.Context().Deadline(); ok && t.Before(d) {
		d = t
	}
	return d
}

// leaderDo runs op locally when this node leads, else proxies the request
// to the leader, retrying on not-leader / no-leader until the deadline.
// A request that was itself forwarded is never forwarded again: it answers
// 503 not_leader and its sender retries.
func (n *Node) leaderDo(w http.ResponseWriter, r *http.Request, body []byte, op func(context.Context) (any, error)) {
	ctx, cancel := context.WithDeadline(r.Context(), adminDeadline(r))
	defer cancel()
	forwarded := r.Header.Get(headerForwarded) != ""
	backoff := 20 * time.Millisecond
	for {
		res, err := op(ctx)
		if err == nil {
			writeJSON(w, http.StatusOK, res)
			return
		}
		if !errors.Is(err, raftstore.ErrNotLeader) && !errors.Is(err, raftstore.ErrNoLeader) {
			status, code := http.StatusInternalServerError, CodeInternal
			switch {
			case errors.Is(err, raftstore.ErrInvalid):
				status, code = http.StatusBadRequest, CodeBadRequest
			case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
				status, code = http.StatusServiceUnavailable, CodeNoLeader
			}
			writeAdminError(w, status, code, err.Error())
			return
		}
		if forwarded {
			writeAdminError(w, http.StatusServiceUnavailable, CodeNotLeader, "this node is not the leader")
			return
		}
		_, addr := n.store.Leader()
		if addr != "" && addr != n.cfg.Advertise {
			status, respBody, retry, ferr := n.forward(ctx, r.Method, r.URL.RequestURI(), addr, body)
			if ferr == nil && !retry {
				n.metrics.forwarded.WithLabelValues("ok").Inc()
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				_, _ = w.Write(respBody)
				return
			}
			n.metrics.forwarded.WithLabelValues("retry").Inc()
			if ferr != nil {
				n.logger.Debug("forward to leader failed", "leader", addr, "err", ferr)
			}
		}
		select {
		case <-ctx.Done():
			writeAdminError(w, http.StatusServiceUnavailable, CodeNoLeader, "no leader reachable before the deadline")
			return
		case <-time.After(backoff):
		}
		if backoff < 500*time.Millisecond {
			backoff *= 2
		}
	}
}

// forward proxies one admin request to addr. retry is true when the leader
// answered not-leader/no-leader or could not be reached.
func (n *Node) forward(ctx context.Context, method, uri, addr string, body []byte) (status int, respBody []byte, retry bool, err error) {
	req, err := http.NewRequestWithContext(ctx, method, "https://"+addr+uri, bytes.NewReader(body))
	if err != nil {
		return 0, nil, false, fmt.Errorf("node: forward request: %w", err)
	}
	req.Header.Set(headerForwarded, n.cfg.NodeID)
	if d, ok := ctx.Deadline(); ok {
		req.Header.Set(headerDeadline, strconv.FormatInt(d.UnixNano(), 10))
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := n.siteClient.Do(req)
	if err != nil {
		return 0, nil, true, fmt.Errorf("node: forward to %s: %w", addr, err)
	}
	defer resp.Body.Close()
	respBody, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, true, fmt.Errorf("node: forward to %s: read: %w", addr, err)
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		var ae AdminError
		if json.Unmarshal(respBody, &ae) == nil && (ae.Code == CodeNotLeader || ae.Code == CodeNoLeader) {
			return resp.StatusCode, respBody, true, nil
		}
	}
	return resp.StatusCode, respBody, false, nil
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
	writeJSON(w, status, AdminError{Message: msg, Code: code})
}
