package kme

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"qkdkms/etsi"
	"qkdkms/raftstore"
)

// Operations that can run on the leader on behalf of another node. The
// forward endpoint is /internal/v1/forward/{op}; peer operations also have
// /internal/v1/peer/{op} for peer sites.
const (
	opConnection    = "connection"
	opConnectionsOf = "connections_of"
	opEncKeys       = "enc_keys"
	opDecKeys       = "dec_keys"
	opRegister      = "register_connection"
	opImportBlock   = "import_block"

	opPeerAssignments = "assignments"
	opPeerBurn        = "burn"
	opPeerRegister    = "register"
	opPeerBlock       = "block"
	opPeerStatus      = "status"
)

// Request bodies of the internal endpoints (the etsi request types travel
// as they are: EncRequest, DecRequest, ConnectionInfo).
type (
	connArgs struct {
		From   string `json:"from,omitempty"` // peer status: set from the caller's certificate
		Master string `json:"master_SAE_ID"`
		Slave  string `json:"slave_SAE_ID"`
	}
	// encArgs / decArgs: an ETSI call and the request ID chosen by the node
	// the SAE called (idempotency across forwarding attempts).
	encArgs struct {
		etsi.EncRequest
		RequestID string `json:"request_id"`
	}
	decArgs struct {
		etsi.DecRequest
		RequestID string `json:"request_id"`
	}
	saeArgs struct {
		SAE string `json:"SAE_ID"`
	}
	// assignmentsArgs: the master site relays assignments to the slave site.
	assignmentsArgs struct {
		From        string                 `json:"from"`
		Assignments []raftstore.Assignment `json:"assignments"`
	}
	// assignmentsResult: one error code per assignment, "" when recorded.
	assignmentsResult struct {
		Results []string `json:"results"`
	}
	burnArgs struct {
		From   string   `json:"from"`
		KeyIDs []string `json:"key_IDs"`
	}
	peerRegisterArgs struct {
		From       string               `json:"from"`
		Connection raftstore.Connection `json:"connection"`
	}
	// blockArgs: one block of key material for a connection's pool; Bits is
	// base64 in JSON.
	blockArgs struct {
		From    string `json:"from,omitempty"`
		Master  string `json:"master_SAE_ID"`
		Slave   string `json:"slave_SAE_ID"`
		BlockID string `json:"block_id"`
		Bits    []byte `json:"bits"`
	}
)

// Error codes carried across the forwarding and peer hops, so that a
// sentinel error survives them.
const (
	codeNotLeader    = "not_leader"
	codeNoLeader     = "no_leader"
	codeUnknownSAE   = "unknown_sae"
	codeUnauthorized = "unauthorized"
	codeKeysNotFound = "keys_not_found"
	codeInsufficient = "insufficient_keys"
	codeConflict     = "conflict"
	codeBadRequest   = "bad_request"
	codeUnavailable  = "unavailable"
	codeForbidden    = "forbidden"
)

// errorBody is every internal endpoint's error answer.
type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// codeOf maps an error (raftstore or etsi sentinel) to a wire code.
func codeOf(err error) string {
	switch {
	case errors.Is(err, raftstore.ErrNotLeader):
		return codeNotLeader
	case errors.Is(err, raftstore.ErrNoLeader):
		return codeNoLeader
	case errors.Is(err, raftstore.ErrConnectionNotFound), errors.Is(err, etsi.ErrUnknownSAE):
		return codeUnknownSAE
	case errors.Is(err, raftstore.ErrNotAuthorized), errors.Is(err, etsi.ErrUnauthorized):
		return codeUnauthorized
	case errors.Is(err, raftstore.ErrKeyNotFound), errors.Is(err, etsi.ErrKeysNotFound):
		return codeKeysNotFound
	case errors.Is(err, raftstore.ErrInsufficientKeys), errors.Is(err, etsi.ErrInsufficientKeys):
		return codeInsufficient
	case errors.Is(err, raftstore.ErrConnectionExists), errors.Is(err, etsi.ErrConflict):
		return codeConflict
	case errors.Is(err, raftstore.ErrInvalid), errors.Is(err, etsi.ErrBadRequest):
		return codeBadRequest
	}
	return codeUnavailable
}

// errorOf is the inverse of codeOf.
func errorOf(code string) error {
	switch code {
	case codeNotLeader:
		return raftstore.ErrNotLeader
	case codeNoLeader:
		return raftstore.ErrNoLeader
	case codeUnknownSAE:
		return etsi.ErrUnknownSAE
	case codeUnauthorized:
		return etsi.ErrUnauthorized
	case codeKeysNotFound:
		return etsi.ErrKeysNotFound
	case codeInsufficient:
		return etsi.ErrInsufficientKeys
	case codeConflict:
		return etsi.ErrConflict
	case codeBadRequest:
		return etsi.ErrBadRequest
	}
	return etsi.ErrUnavailable
}

// statusOf is the HTTP status an internal error answer carries (the code
// in the body is authoritative).
func statusOf(code string) int {
	switch code {
	case codeNotLeader:
		return http.StatusMisdirectedRequest
	case codeUnknownSAE, codeUnauthorized:
		return http.StatusUnauthorized
	case codeForbidden:
		return http.StatusForbidden
	case codeKeysNotFound, codeConflict, codeBadRequest:
		return http.StatusBadRequest
	}
	return http.StatusServiceUnavailable
}

// toETSI maps any error to an etsi sentinel (wrapped with its text).
// Not-leader and no-leader become ErrUnavailable: the caller ran out of
// time finding a leader.
func toETSI(err error) error {
	if err == nil {
		return nil
	}
	for _, s := range []error{etsi.ErrUnknownSAE, etsi.ErrUnauthorized, etsi.ErrKeysNotFound,
		etsi.ErrInsufficientKeys, etsi.ErrUnavailable, etsi.ErrConflict, etsi.ErrBadRequest} {
		if errors.Is(err, s) {
			return err
		}
	}
	s := errorOf(codeOf(err))
	return fmt.Errorf("%w: %v", s, err)
}

func isRetryable(err error) bool {
	return errors.Is(err, raftstore.ErrNotLeader) || errors.Is(err, raftstore.ErrNoLeader)
}

// deadlineHeader carries the caller's remaining time across a hop (ms).
const deadlineHeader = "X-Qkdkms-Deadline-Ms"

// leaderHeader: a node that answers a peer call names its site's leader
// (HTTPS base URL) so the peer can address the leader directly next time.
const leaderHeader = "X-Qkdkms-Leader"

// run executes local on this node when it is the leader; otherwise (or when
// local reports not-leader) it forwards op to the leader, retrying with a
// short backoff on not-leader/no-leader within the caller's deadline.
// local must return ErrNotLeader/ErrNoLeader only when it changed nothing.
// Errors come back as etsi sentinels.
func (k *KME) run(ctx context.Context, op string, in, out any, local func(context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, k.cfg.CallTimeout)
		defer cancel()
	}
	backoff := 5 * time.Millisecond
	var last error
	for {
		var err error
		if k.site.IsLeader() {
			err = local(ctx)
		} else if _, addr := k.site.Leader(); addr != "" {
			err = k.forward(ctx, k.resolveBase(addr), op, in, out)
		} else {
			err = raftstore.ErrNoLeader
		}
		if !isRetryable(err) {
			return toETSI(err)
		}
		last = err
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w: %s: no leader reachable before the deadline: %v", etsi.ErrUnavailable, op, last)
		case <-t.C:
		}
		backoff = min(backoff*2, 100*time.Millisecond)
	}
}

func (k *KME) resolveBase(raftAddr string) string { return baseURL(k.resolve(raftAddr)) }

// forward posts op to the leader's /internal/v1/forward/{op}. Every
// operation is idempotent (enc_keys and dec_keys carry the request ID chosen
// at the first node, and the store answers a repeated ID with the first
// result), so a transport error is retried like not-leader: at whatever
// node leads by then, until the caller's deadline.
func (k *KME) forward(ctx context.Context, base, op string, in, out any) error {
	err := k.post(ctx, base+"/internal/v1/forward/"+op, in, out, nil)
	var te *transportError
	if errors.As(err, &te) {
		return fmt.Errorf("%w: forward %s: %v", raftstore.ErrNoLeader, op, te.err)
	}
	return err
}

// transportError: the request got no HTTP answer. dial is true when it
// provably never left this node.
type transportError struct {
	err  error
	dial bool
}

func (e *transportError) Error() string { return e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

// post sends a JSON request and decodes a JSON answer: 200 into out, an
// error body into its sentinel. onHeader sees the answer's headers.
func (k *KME) post(ctx context.Context, url string, in, out any, onHeader func(http.Header)) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("%w: encode request: %v", etsi.ErrUnavailable, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: %v", etsi.ErrUnavailable, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if d, ok := ctx.Deadline(); ok {
		req.Header.Set(deadlineHeader, strconv.FormatInt(max(time.Until(d).Milliseconds(), 1), 10))
	}
	resp, err := k.client.Do(req)
	if err != nil {
		var oe *net.OpError
		return &transportError{err: err, dial: errors.As(err, &oe) && oe.Op == "dial"}
	}
	defer resp.Body.Close()
	if onHeader != nil {
		onHeader(resp.Header)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return &transportError{err: err}
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%w: decode answer from %s: %v", etsi.ErrUnavailable, url, err)
		}
		return nil
	}
	var eb errorBody
	if err := json.Unmarshal(data, &eb); err != nil || eb.Code == "" {
		return fmt.Errorf("%w: %s answered %d", etsi.ErrUnavailable, url, resp.StatusCode)
	}
	sentinel := errorOf(eb.Code)
	return fmt.Errorf("%w: %s", sentinel, strings.TrimPrefix(eb.Message, sentinel.Error()+": "))
}
