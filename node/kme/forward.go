package kme

import (
	"context"
	"net/http"

	"qkdkms/etsi"
	"qkdkms/node/forward"
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
	opPeerDelete      = "delete"
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

// stamp records the calling peer site in its call's arguments (servePeer:
// from the caller's certificate, never from the body).
func (a *connArgs) stamp(from string)         { a.From = from }
func (a *assignmentsArgs) stamp(from string)  { a.From = from }
func (a *burnArgs) stamp(from string)         { a.From = from }
func (a *peerRegisterArgs) stamp(from string) { a.From = from }
func (a *blockArgs) stamp(from string)        { a.From = from }

// The error table, the deadline header and the forwarder are package
// forward's (one for the ETSI and the admin path); these names are the ones
// the rest of this package uses.
const (
	codeNotLeader    = forward.CodeNotLeader
	codeUnauthorized = forward.CodeUnauthorized
	codeBadRequest   = forward.CodeBadRequest
	codeForbidden    = forward.CodeForbidden

	deadlineHeader = forward.DeadlineHeader
)

// errorBody is every internal endpoint's error answer.
type errorBody = forward.Error

// transportError: a request got no HTTP answer.
type transportError = forward.TransportError

// codeOf is err's wire code (forward.Table).
func codeOf(err error) string { return forward.CodeOf(err) }

// statusOf is the HTTP status of an error answer with code.
func statusOf(code string) int { return forward.StatusOf(code) }

// isRetryable: not-leader or no-leader, nothing changed.
func isRetryable(err error) bool { return forward.Retryable(err) }

// leaderHeader: a node that answers a peer call names its site's leader
// (HTTPS base URL) so the peer can address the leader directly next time.
const leaderHeader = "X-Qkdkms-Leader"

// run executes local on this node when it is the leader; otherwise (or when
// local reports not-leader) it forwards op to the leader's
// /internal/v1/forward/{op} with the forwarder's one retry policy, within
// the caller's deadline (CallTimeout when it has none). local must return
// ErrNotLeader/ErrNoLeader only when it changed nothing. Every operation is
// idempotent (enc_keys and dec_keys carry the request ID chosen at the
// first node, and the store answers a repeated ID with the first result;
// the others are no-ops when repeated), so an unknown outcome is retried
// too. Errors come back as etsi sentinels.
func (k *KME) run(ctx context.Context, op string, in, out any, local func(context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, k.cfg.CallTimeout)
		defer cancel()
	}
	f := forward.Forwarder{Leader: k.leader, Log: k.log}
	return forward.ToETSI(f.Do(ctx, forward.Op{
		Name:  op,
		Local: local,
		Remote: func(ctx context.Context, base string) error {
			return forward.Post(ctx, k.client, base+"/internal/v1/forward/"+op, in, out, nil)
		},
		Idempotent: true,
	}))
}

// onLeader runs operation op, local, on the site's leader (run): the local
// functions of internalOps, called in process or through the forward
// endpoint.
func onLeader[In, Out any](ctx context.Context, k *KME, op string, in In, local func(*KME, context.Context, In) (Out, error)) (Out, error) {
	var out Out
	err := k.run(ctx, op, in, &out, func(ctx context.Context) error {
		var err error
		out, err = local(k, ctx, in)
		return err
	})
	return out, err
}

// leader is the forwarder's view of the site: this node, or the leader's
// HTTPS base URL.
func (k *KME) leader() (bool, string) {
	if k.site.IsLeader() {
		return true, ""
	}
	if _, addr := k.site.Leader(); addr != "" {
		return false, k.resolveBase(addr)
	}
	return false, ""
}

func (k *KME) resolveBase(raftAddr string) string { return baseURL(k.resolve(raftAddr)) }

// post sends a JSON request and decodes a JSON answer: 200 into out, an
// error body into its sentinel (forward.Post). onHeader sees the answer's
// headers.
func (k *KME) post(ctx context.Context, url string, in, out any, onHeader func(http.Header)) error {
	return forward.Post(ctx, k.client, url, in, out, onHeader)
}
