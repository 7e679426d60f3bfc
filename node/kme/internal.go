package kme

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"qkdkms/etsi"
	"qkdkms/etsi/pki"
	"qkdkms/node/forward"
)

// maxBody bounds internal request and answer bodies (a relay batch of 512
// assignments or a large imported block fits easily).
const maxBody = 64 << 20

// InternalHandler serves /internal/ (see the package comment). Every
// endpoint requires a verified client certificate with a kme: identity:
// this site's for forward and admin, a configured peer's for peer calls.
// Failures answer 401 (no identity) or 403 (wrong identity) with a JSON
// body {"code","message"}.
func (k *KME) InternalHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /internal/v1/forward/{op}", k.serveForward)
	mux.HandleFunc("POST /internal/v1/peer/{op}", k.servePeer)
	mux.HandleFunc("POST /internal/v1/admin/blocks", k.serveAdminImport)
	mux.HandleFunc("/internal/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, codeBadRequest, "no such internal endpoint", http.StatusNotFound)
	})
	return mux
}

// AdminHandler serves the operator's block import (POST, body
// {"master_SAE_ID","slave_SAE_ID","block_id","bits"(base64)}), for node to
// mount, e.g. at /admin/v1/blocks. Only this site's node certificates
// (kme:<ID>) and operator certificates (kme-admin:<ID>) are accepted.
func (k *KME) AdminHandler() http.Handler { return http.HandlerFunc(k.serveAdminImport) }

func writeError(w http.ResponseWriter, code, msg string, status int) {
	w.Header().Set("Content-Type", "application/json")
	if status == 0 {
		status = statusOf(code)
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errorBody{Code: code, Message: msg})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// callerKME returns the kme: identity of the verified client certificate.
func callerKME(r *http.Request) (string, bool) {
	cert := verifiedCert(r)
	if cert == nil {
		return "", false
	}
	id := pki.KMEID(cert)
	return id, id != ""
}

func verifiedCert(r *http.Request) *x509.Certificate {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return nil
	}
	return r.TLS.VerifiedChains[0][0]
}

// adminIdentity accepts this site's node certificates (kme:<ID>) and its
// operator certificates (kme-admin:<ID>).
func adminIdentity(r *http.Request) (string, bool) {
	cert := verifiedCert(r)
	if cert == nil {
		return "", false
	}
	if id := pki.OperatorKME(cert); id != "" {
		return id, true
	}
	id := pki.KMEID(cert)
	return id, id != ""
}

// authorize checks the caller's identity: ok reports whether to go on.
func (k *KME) authorize(w http.ResponseWriter, r *http.Request, allowed func(string) bool) (string, bool) {
	return k.authorizeWith(w, r, callerKME, allowed)
}

func (k *KME) authorizeWith(w http.ResponseWriter, r *http.Request, identity func(*http.Request) (string, bool), allowed func(string) bool) (string, bool) {
	id, ok := identity(r)
	if !ok {
		writeError(w, codeUnauthorized, "a KME node certificate is required", http.StatusUnauthorized)
		return "", false
	}
	if !allowed(id) {
		k.log.Warn("internal call refused", "caller_kme", id, "path", r.URL.Path)
		writeError(w, codeForbidden, fmt.Sprintf("KME %s may not call %s", id, r.URL.Path), http.StatusForbidden)
		return "", false
	}
	return id, true
}

func (k *KME) sameSite(id string) bool { return id == k.id }

func (k *KME) isPeer(id string) bool { _, ok := k.peers[id]; return ok && id != k.id }

// decode reads a strict JSON body (unknown fields and trailing data refused).
func decode(r *http.Request, v any) error {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return fmt.Errorf("%w: read body: %v", etsi.ErrBadRequest, err)
	}
	if len(data) > maxBody {
		return fmt.Errorf("%w: body too large", etsi.ErrBadRequest)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: decode body: %v", etsi.ErrBadRequest, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data after JSON body", etsi.ErrBadRequest)
	}
	return nil
}

// requestContext applies the deadline the caller sent.
func requestContext(r *http.Request) (context.Context, context.CancelFunc) {
	if ms, err := strconv.ParseInt(r.Header.Get(deadlineHeader), 10, 64); err == nil && ms > 0 {
		return context.WithTimeout(r.Context(), forward.Millis(ms))
	}
	return context.WithCancel(r.Context())
}

// serveForward runs an operation on this node for another node of the
// site, only if this node is the leader (no second hop: the caller retries).
func (k *KME) serveForward(w http.ResponseWriter, r *http.Request) {
	if _, ok := k.authorize(w, r, k.sameSite); !ok {
		return
	}
	ctx, cancel := requestContext(r)
	defer cancel()
	op := r.PathValue("op")
	if !k.site.IsLeader() {
		k.writeLeaderHint(w)
		writeError(w, codeNotLeader, "not the leader", 0)
		return
	}
	var (
		out any
		err error
	)
	if f := k.cfg.PeerOps[strings.TrimPrefix(op, peerOpPrefix)]; f != nil && strings.HasPrefix(op, peerOpPrefix) {
		var in peerOpArgs
		var res json.RawMessage
		if err = decode(r, &in); err == nil {
			err = k.localPeerOp(ctx, f, in, &res)
		}
		out = res
	} else if h, ok := internalOps[op]; ok {
		out, err = h.here(k, ctx, r)
	} else {
		writeError(w, codeBadRequest, "unknown operation "+op, http.StatusNotFound)
		return
	}
	if err != nil {
		writeError(w, codeOf(err), err.Error(), 0)
		return
	}
	writeJSON(w, out)
}

// servePeer answers a peer site's call, running it on this site's leader
// (forwarding from a follower).
func (k *KME) servePeer(w http.ResponseWriter, r *http.Request) {
	from, ok := k.authorize(w, r, k.isPeer)
	if !ok {
		return
	}
	ctx, cancel := requestContext(r)
	defer cancel()
	op := r.PathValue("op")
	var (
		out any
		err error
	)
	if h := internalOps[op]; h.peer != nil {
		out, err = h.peer(k, ctx, op, r, from)
	} else if f := k.cfg.PeerOps[op]; f != nil {
		var in peerOpArgs
		if err = decode(r, &in.Body); err == nil {
			in.From = from
			var res json.RawMessage
			err = k.run(ctx, peerOpPrefix+op, in, &res, func(ctx context.Context) error {
				return k.localPeerOp(ctx, f, in, &res)
			})
			out = res
		}
	} else {
		writeError(w, codeBadRequest, "unknown operation "+op, http.StatusNotFound)
		return
	}
	k.writeLeaderHint(w)
	if err != nil {
		writeError(w, codeOf(err), err.Error(), 0)
		return
	}
	writeJSON(w, out)
}

// internalOp is one operation of the internal endpoints: here decodes its
// arguments and runs it on this node, the leader (serveForward); peer, set
// for the operations peer sites call (servePeer), also stamps the calling
// site into the arguments and forwards to the leader from a follower.
type internalOp struct {
	here func(k *KME, ctx context.Context, r *http.Request) (any, error)
	peer func(k *KME, ctx context.Context, op string, r *http.Request, from string) (any, error)
}

// internalOps is the dispatch table of the internal endpoints, by operation
// name (forward.go).
var internalOps = map[string]internalOp{
	opConnection:      siteOp((*KME).localConnection),
	opConnectionsOf:   siteOp((*KME).localConnectionsOf),
	opEncKeys:         siteOp((*KME).localEncKeys),
	opDecKeys:         siteOp((*KME).localDecKeys),
	opRegister:        siteOp(noResult((*KME).localRegister)),
	opReportVersion:   siteOp(noResult((*KME).localReportVersion)),
	opImportBlock:     siteOp(noResult((*KME).localImport)),
	opPeerAssignments: peerOp((*KME).localRecord),
	opPeerBurn:        peerOp(noResult((*KME).localPeerBurn)),
	opPeerRegister:    peerOp(noResult((*KME).localPeerRegister)),
	opPeerBlock:       peerOp(noResult((*KME).localPeerBlock)),
	opPeerStatus:      peerOp((*KME).localPeerStatus),
	opPeerDelete:      peerOp((*KME).localPeerDelete),
}

// siteOp is an operation the nodes of a site forward to their leader.
func siteOp[In, Out any](local func(*KME, context.Context, In) (Out, error)) internalOp {
	return internalOp{here: func(k *KME, ctx context.Context, r *http.Request) (any, error) {
		var in In
		if err := decode(r, &in); err != nil {
			return nil, err
		}
		return local(k, ctx, in)
	}}
}

// peerOp is an operation peer sites call; its arguments carry the caller.
func peerOp[In any, PIn interface {
	*In
	stamp(from string)
}, Out any](local func(*KME, context.Context, In) (Out, error)) internalOp {
	h := siteOp(local)
	h.peer = func(k *KME, ctx context.Context, op string, r *http.Request, from string) (any, error) {
		var in In
		if err := decode(r, &in); err != nil {
			return nil, err
		}
		PIn(&in).stamp(from)
		return onLeader(ctx, k, op, in, local)
	}
	return h
}

// noResult adapts an operation that answers nothing but its error.
func noResult[In any](local func(*KME, context.Context, In) error) func(*KME, context.Context, In) (struct{}, error) {
	return func(k *KME, ctx context.Context, in In) (struct{}, error) { return struct{}{}, local(k, ctx, in) }
}

// peerOpPrefix names a PeerOp on the forward endpoint.
const peerOpPrefix = "peerop_"

// peerOpArgs is a PeerOp call forwarded to the leader.
type peerOpArgs struct {
	From string          `json:"from"`
	Body json.RawMessage `json:"body"`
}

func (k *KME) localPeerOp(ctx context.Context, f PeerOp, in peerOpArgs, res *json.RawMessage) error {
	out, err := f(ctx, in.From, in.Body)
	if err != nil {
		return err
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	*res = b
	return nil
}

// CallPeer calls op on peer site kmeID (its leader, following hints and
// retrying transport failures within ctx) and decodes the answer into out.
func (k *KME) CallPeer(ctx context.Context, kmeID, op string, in, out any) error {
	p := k.peers[kmeID]
	if p == nil {
		return fmt.Errorf("%w: %s is not a peer of %s", etsi.ErrBadRequest, kmeID, k.id)
	}
	return p.call(ctx, op, in, out)
}

func (k *KME) writeLeaderHint(w http.ResponseWriter) {
	if k.site.IsLeader() {
		return
	}
	if _, addr := k.site.Leader(); addr != "" {
		w.Header().Set(leaderHeader, k.resolveBase(addr))
	}
}

// serveAdminImport imports one block at both sites (see ImportBlock).
func (k *KME) serveAdminImport(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeError(w, codeBadRequest, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if _, ok := k.authorizeWith(w, r, adminIdentity, k.sameSite); !ok {
		return
	}
	ctx, cancel := requestContext(r)
	defer cancel()
	var in blockArgs
	if err := decode(r, &in); err != nil {
		writeError(w, codeBadRequest, err.Error(), 0)
		return
	}
	if in.From != "" {
		writeError(w, codeBadRequest, "from is not an admin field", 0)
		return
	}
	if err := k.ImportBlock(ctx, in.Master, in.Slave, in.BlockID, in.Bits); err != nil {
		code := codeOf(err)
		if errors.Is(err, etsi.ErrUnknownSAE) {
			// For an operator, a missing connection is a bad request.
			code = codeBadRequest
		}
		writeError(w, code, err.Error(), 0)
		return
	}
	writeJSON(w, map[string]any{"block_id": in.BlockID, "bits": len(in.Bits) * 8})
}
