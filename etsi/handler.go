package etsi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"qkdkms/etsi/pki"
)

// Options configure NewHandler.
type Options struct {
	// Audit receives one record per call (message "etsi call"): SAE ID,
	// certificate fingerprint, call, path SAE, key IDs, status, outcome.
	// Never key bits. nil discards.
	Audit *slog.Logger
	// Log receives operational messages (backend failures, contract
	// violations). nil discards.
	Log *slog.Logger
	// MaxBodyBytes bounds request bodies; 0 means DefaultMaxBodyBytes
	// (64 KiB). Larger bodies get 413 with a JSON error.
	MaxBodyBytes int64
	// Timeout bounds each Backend call; 0 means only the request context.
	Timeout time.Duration
}

type handler struct {
	b       Backend
	audit   *slog.Logger
	log     *slog.Logger
	maxBody int64
	timeout time.Duration
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// NewHandler serves the ETSI GS QKD 014 API of b under /api/v1/keys/ (see
// API.md). Mount it on a mutual-TLS listener: the caller's SAE ID is read
// from its verified client certificate (r.TLS.VerifiedChains), never from
// the request. Use tls.VerifyClientCertIfGiven (or RequireAndVerify) so a
// client without a certificate gets a JSON 401 rather than a TLS alert.
func NewHandler(b Backend, opts Options) http.Handler {
	h := &handler{b: b, audit: opts.Audit, log: opts.Log, maxBody: opts.MaxBodyBytes, timeout: opts.Timeout}
	if h.audit == nil {
		h.audit = discard()
	}
	if h.log == nil {
		h.log = discard()
	}
	if h.maxBody <= 0 {
		h.maxBody = DefaultMaxBodyBytes
	}
	r := mux.NewRouter()
	r.SkipClean(true) // real clients do not follow the redirects path cleaning answers with
	r.HandleFunc("/api/v1/keys/{sae}/status", h.wrap("status", h.status)).Methods(http.MethodGet)
	r.HandleFunc("/api/v1/keys/{sae}/enc_keys", h.wrap("enc_keys", h.encKeys)).Methods(http.MethodGet, http.MethodPost)
	r.HandleFunc("/api/v1/keys/{sae}/dec_keys", h.wrap("dec_keys", h.decKeys)).Methods(http.MethodGet, http.MethodPost)
	r.MethodNotAllowedHandler = h.wrap("method_not_allowed", func(w http.ResponseWriter, r *http.Request, rec *auditRec) {
		identify(r, rec)
		allow := "GET, POST"
		if strings.HasSuffix(r.URL.Path, "/status") {
			allow = "GET"
		}
		w.Header().Set("Allow", allow)
		h.fail(w, rec, http.StatusMethodNotAllowed, "method not allowed", map[string]any{"method": r.Method, "allow": allow})
	})
	r.NotFoundHandler = h.wrap("not_found", func(w http.ResponseWriter, r *http.Request, rec *auditRec) {
		identify(r, rec)
		h.fail(w, rec, http.StatusNotFound, "not found", map[string]any{"path": r.URL.Path})
	})
	return r
}

// auditRec collects one audit record.
type auditRec struct {
	call, method, pathSAE, sae, fp, remote string
	keyIDs                                 []string
	number, size                           int
	status                                 int
	outcome                                string
	backendErr                             string
}

func (h *handler) wrap(call string, fn func(http.ResponseWriter, *http.Request, *auditRec)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &auditRec{call: call, method: r.Method, pathSAE: mux.Vars(r)["sae"], remote: r.RemoteAddr}
		fn(w, r, rec)
		logAudit(r.Context(), h.audit, rec, start)
	}
}

func logAudit(ctx context.Context, l *slog.Logger, rec *auditRec, start time.Time) {
	level := slog.LevelInfo
	if rec.status >= 400 {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.String("call", rec.call),
		slog.String("method", rec.method),
		slog.String("sae", rec.sae),
		slog.String("cert_sha256", rec.fp),
		slog.String("path_sae", rec.pathSAE),
		slog.Int("status", rec.status),
		slog.String("outcome", rec.outcome),
		slog.Any("key_ids", rec.keyIDs),
		slog.String("remote", rec.remote),
		slog.Float64("ms", float64(time.Since(start).Microseconds())/1000),
	}
	if rec.number > 0 {
		attrs = append(attrs, slog.Int("number", rec.number), slog.Int("size", rec.size))
	}
	if rec.backendErr != "" {
		attrs = append(attrs, slog.String("backend_error", rec.backendErr))
	}
	l.LogAttrs(ctx, level, "etsi call", attrs...)
}

// identify reads the caller's SAE ID from its verified certificate into
// rec; false when there is no verified certificate or no identity in it.
func identify(r *http.Request, rec *auditRec) bool {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return false
	}
	cert := r.TLS.VerifiedChains[0][0]
	rec.fp = pki.Fingerprint(cert)
	id, err := pki.SAEID(cert)
	if err != nil || !ValidSAEID(id) {
		return false
	}
	rec.sae = id
	return true
}

func (h *handler) requireSAE(w http.ResponseWriter, r *http.Request, rec *auditRec) bool {
	if identify(r, rec) {
		return true
	}
	reason := "no verified client certificate"
	if rec.fp != "" {
		reason = "the client certificate carries no SAE ID"
	}
	h.fail(w, rec, http.StatusUnauthorized, "unauthorized", map[string]any{"reason": reason})
	return false
}

func (h *handler) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	if h.timeout > 0 {
		return context.WithTimeout(r.Context(), h.timeout)
	}
	return context.WithCancel(r.Context())
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil { // cannot happen for our types
		code, b = http.StatusInternalServerError, []byte(`{"message":"internal error","details":[]}`)
	}
	w.Header().Set("Content-Type", contentTypeJSON)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

func (h *handler) fail(w http.ResponseWriter, rec *auditRec, code int, msg string, details ...map[string]any) {
	if details == nil {
		details = []map[string]any{}
	}
	rec.status, rec.outcome = code, msg
	writeJSON(w, code, Error{Message: msg, Details: details})
}

func (h *handler) failRequest(w http.ResponseWriter, rec *auditRec, err error) {
	var re *RequestError
	if errors.As(err, &re) {
		h.fail(w, rec, http.StatusBadRequest, re.Message, re.Details...)
		return
	}
	rec.backendErr = err.Error()
	h.fail(w, rec, http.StatusBadRequest, "bad request", map[string]any{"reason": "invalid request"})
}

// failBackend maps a Backend error to its HTTP answer.
func (h *handler) failBackend(w http.ResponseWriter, rec *auditRec, err error) {
	code, msg := BackendStatus(err)
	rec.backendErr = err.Error()
	// Fixed reasons only: the backend's words may name other tenants' SAE
	// IDs or internals; the audit record (backend_error) keeps them.
	var reason string
	switch {
	case errors.Is(err, ErrBadRequest):
		reason = "the KME refused the request for this connection (e.g. an additional slave SAE without a connection to the master at the slave KME)"
	case errors.Is(err, ErrConflict):
		reason = "a connection between these SAEs exists with other parameters"
	case errors.Is(err, ErrInsufficientKeys):
		reason = "fewer keys stored than asked for"
	case errors.Is(err, ErrUnknownSAE):
		reason = "no connection between these SAEs at this KME"
	case errors.Is(err, ErrUnauthorized):
		reason = "the caller is not named as a slave for one or more of the keys"
	case errors.Is(err, ErrKeysNotFound):
		reason = "unknown, already fetched, issued by another master, or not for this caller"
	case errors.Is(err, ErrUnavailable), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		h.log.Warn("etsi backend unavailable", "call", rec.call, "sae", rec.sae, "err", err)
		reason = "the KME cannot serve this request now; retry later"
	default:
		h.log.Error("etsi backend failure", "call", rec.call, "sae", rec.sae, "err", err)
		reason = "internal error"
	}
	h.fail(w, rec, code, msg, map[string]any{"reason": reason})
}

// BackendStatus maps a Backend error to the HTTP status and message the
// API answers with.
func BackendStatus(err error) (int, string) {
	switch {
	case errors.Is(err, ErrUnknownSAE):
		return http.StatusUnauthorized, "unauthorized: unknown SAE"
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized, "unauthorized"
	case errors.Is(err, ErrKeysNotFound):
		return http.StatusBadRequest, MsgKeysNotFound
	case errors.Is(err, ErrInsufficientKeys):
		return http.StatusServiceUnavailable, "insufficient keys stored on KME"
	case errors.Is(err, ErrConflict):
		return http.StatusBadRequest, "a connection with different parameters exists"
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest, "bad request"
	case errors.Is(err, ErrUnavailable), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable, "service unavailable"
	default:
		return http.StatusServiceUnavailable, "service unavailable"
	}
}

// readBody reads at most maxBody bytes; false (answered) when larger or
// unreadable.
func (h *handler) readBody(w http.ResponseWriter, r *http.Request, rec *auditRec) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			h.fail(w, rec, http.StatusRequestEntityTooLarge, "request body too large",
				map[string]any{"limit_bytes": h.maxBody})
			return nil, false
		}
		rec.backendErr = err.Error()
		h.fail(w, rec, http.StatusBadRequest, "cannot read request body", map[string]any{"reason": "the body could not be read in time"})
		return nil, false
	}
	return body, true
}

// connectionAsMaster finds the connection caller→slave whose master site
// is this KME; false (answered 400/401/503) otherwise.
func (h *handler) connectionAsMaster(ctx context.Context, w http.ResponseWriter, rec *auditRec) (ConnectionInfo, bool) {
	return h.masterConnection(ctx, w, rec, h.b.Connection)
}

// limitsAsMaster is connectionAsMaster for validating enc_keys: it uses the
// backend's Limits (a local copy) when it has one.
func (h *handler) limitsAsMaster(ctx context.Context, w http.ResponseWriter, rec *auditRec) (ConnectionInfo, bool) {
	if lb, ok := h.b.(LimitsBackend); ok {
		return h.masterConnection(ctx, w, rec, lb.Limits)
	}
	return h.connectionAsMaster(ctx, w, rec)
}

func (h *handler) masterConnection(ctx context.Context, w http.ResponseWriter, rec *auditRec,
	lookup func(ctx context.Context, master, slave string) (ConnectionInfo, error)) (ConnectionInfo, bool) {
	if rec.sae == rec.pathSAE {
		h.fail(w, rec, http.StatusBadRequest, "master and slave SAE shall differ",
			map[string]any{"parameter": "slave_SAE_ID", "reason": "the caller named itself as slave"})
		return ConnectionInfo{}, false
	}
	if !ValidSAEID(rec.pathSAE) {
		h.fail(w, rec, http.StatusUnauthorized, "unauthorized: unknown SAE",
			map[string]any{"parameter": "slave_SAE_ID", "reason": "not a valid SAE ID"})
		return ConnectionInfo{}, false
	}
	ci, err := lookup(ctx, rec.sae, rec.pathSAE)
	if err != nil {
		if errors.Is(err, ErrUnknownSAE) {
			h.fail(w, rec, http.StatusUnauthorized, "unauthorized: unknown SAE",
				map[string]any{"parameter": "slave_SAE_ID", "reason": "no connection from the caller to this slave SAE at this KME"})
			return ConnectionInfo{}, false
		}
		h.failBackend(w, rec, err)
		return ConnectionInfo{}, false
	}
	if ci.SourceKME != h.b.KMEID() || ci.MasterSAE != rec.sae || ci.SlaveSAE != rec.pathSAE {
		h.fail(w, rec, http.StatusUnauthorized, "unauthorized: unknown SAE",
			map[string]any{"parameter": "slave_SAE_ID", "reason": "the caller is not the master SAE at this KME of a connection to this slave SAE"})
		return ConnectionInfo{}, false
	}
	return ci, true
}

func (h *handler) status(w http.ResponseWriter, r *http.Request, rec *auditRec) {
	if !h.requireSAE(w, r, rec) {
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	ci, ok := h.connectionAsMaster(ctx, w, rec)
	if !ok {
		return
	}
	rec.status, rec.outcome = http.StatusOK, "ok"
	writeJSON(w, http.StatusOK, StatusOf(ci))
}

// StatusOf is the Status object of a connection.
func StatusOf(c ConnectionInfo) Status {
	return Status{
		SourceKMEID: c.SourceKME, TargetKMEID: c.TargetKME,
		MasterSAEID: c.MasterSAE, SlaveSAEID: c.SlaveSAE,
		KeySize: c.KeySize, StoredKeyCount: max(c.StoredKeyCount, 0),
		MaxKeyCount: c.MaxKeyCount, MaxKeyPerRequest: c.MaxKeyPerRequest,
		MaxKeySize: c.MaxKeySize, MinKeySize: c.MinKeySize,
		MaxSAEIDCount: c.MaxSAEIDCount, StatusExtension: map[string]any{},
	}
}

// parseEncQuery reads the GET form of enc_keys: only number and size, each
// at most once.
func parseEncQuery(q url.Values) (KeyRequest, error) {
	var req KeyRequest
	for name, vals := range q {
		if name != "number" && name != "size" {
			return req, badRequest("unsupported query parameter", name, "GET enc_keys accepts only number and size; use POST for the others")
		}
		if len(vals) != 1 {
			return req, badRequest("query parameter given more than once", name, "give it once")
		}
		n, err := parseInt(name, json.RawMessage(vals[0]))
		if err != nil {
			return req, err
		}
		if n <= 0 {
			return req, badRequest(name+" shall be a positive integer", name, fmt.Sprintf("got %d", n))
		}
		if name == "number" {
			req.Number = n
		} else {
			req.Size = n
		}
	}
	return req, nil
}

func (h *handler) encKeys(w http.ResponseWriter, r *http.Request, rec *auditRec) {
	if !h.requireSAE(w, r, rec) {
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	ci, ok := h.limitsAsMaster(ctx, w, rec)
	if !ok {
		return
	}
	var req KeyRequest
	var err error
	if r.Method == http.MethodGet {
		req, err = parseEncQuery(r.URL.Query())
	} else {
		if r.URL.RawQuery != "" {
			h.fail(w, rec, http.StatusBadRequest, "query parameters are only accepted with GET",
				map[string]any{"reason": "put the parameters in the JSON body"})
			return
		}
		body, ok := h.readBody(w, r, rec)
		if !ok {
			return
		}
		req, err = DecodeKeyRequest(body)
	}
	if err != nil {
		h.failRequest(w, rec, err)
		return
	}
	er, err := ConnectionLimits(req, ci)
	if err != nil {
		h.failRequest(w, rec, err)
		return
	}
	rec.number, rec.size = er.Number, er.Size
	keys, err := h.b.EncKeys(ctx, er)
	if err != nil {
		h.failBackend(w, rec, err)
		return
	}
	kc, err := container(keys, nil, er.Size)
	if err == nil && len(keys) != er.Number {
		err = fmt.Errorf("backend returned %d keys for %d", len(keys), er.Number)
	}
	if err != nil {
		h.log.Error("etsi backend broke its contract", "call", rec.call, "err", err)
		h.fail(w, rec, http.StatusServiceUnavailable, "service unavailable", map[string]any{"reason": "internal error"})
		return
	}
	for _, k := range kc.Keys {
		rec.keyIDs = append(rec.keyIDs, k.KeyID)
	}
	rec.status, rec.outcome = http.StatusOK, "ok"
	writeJSON(w, http.StatusOK, kc)
}

// container builds the Key container. With order, keys come back in that
// order and must be exactly that set; size > 0 checks each key's length.
func container(keys []Key, order []string, size int) (KeyContainer, error) {
	kc := KeyContainer{Keys: make([]KeyObject, 0, len(keys))}
	byID := make(map[string]Key, len(keys))
	for _, k := range keys {
		id, ok := CanonicalKeyID(k.KeyID)
		if !ok || id != k.KeyID {
			return kc, fmt.Errorf("key ID %q is not a canonical UUID", k.KeyID)
		}
		if len(k.Bits) == 0 || (size > 0 && len(k.Bits)*8 != size) {
			return kc, fmt.Errorf("key %s has %d bytes", k.KeyID, len(k.Bits))
		}
		if _, dup := byID[id]; dup {
			return kc, fmt.Errorf("key %s returned twice", id)
		}
		byID[id] = k
	}
	if order == nil {
		for _, k := range keys {
			kc.Keys = append(kc.Keys, KeyObject{KeyID: k.KeyID, Key: base64.StdEncoding.EncodeToString(k.Bits)})
		}
		return kc, nil
	}
	if len(order) != len(keys) {
		return kc, fmt.Errorf("backend returned %d keys for %d IDs", len(keys), len(order))
	}
	for _, id := range order {
		k, ok := byID[id]
		if !ok {
			return kc, fmt.Errorf("backend did not return key %s", id)
		}
		kc.Keys = append(kc.Keys, KeyObject{KeyID: k.KeyID, Key: base64.StdEncoding.EncodeToString(k.Bits)})
	}
	return kc, nil
}

func (h *handler) decKeys(w http.ResponseWriter, r *http.Request, rec *auditRec) {
	if !h.requireSAE(w, r, rec) {
		return
	}
	if rec.sae == rec.pathSAE {
		h.fail(w, rec, http.StatusBadRequest, "master and slave SAE shall differ",
			map[string]any{"parameter": "master_SAE_ID", "reason": "the caller named itself as master"})
		return
	}
	if !ValidSAEID(rec.pathSAE) {
		h.fail(w, rec, http.StatusUnauthorized, "unauthorized: unknown SAE",
			map[string]any{"parameter": "master_SAE_ID", "reason": "not a valid SAE ID"})
		return
	}
	var ids []string
	var err error
	if r.Method == http.MethodGet {
		ids, err = parseDecQuery(r.URL.Query())
	} else {
		if r.URL.RawQuery != "" {
			h.fail(w, rec, http.StatusBadRequest, "query parameters are only accepted with GET",
				map[string]any{"reason": "put the key IDs in the JSON body"})
			return
		}
		body, ok := h.readBody(w, r, rec)
		if !ok {
			return
		}
		ids, err = DecodeKeyIDs(body)
	}
	if err != nil {
		h.failRequest(w, rec, err)
		return
	}
	rec.keyIDs = ids
	ctx, cancel := h.ctx(r)
	defer cancel()
	keys, err := h.b.DecKeys(ctx, DecRequest{SlaveSAE: rec.sae, MasterSAE: rec.pathSAE, KeyIDs: ids})
	if err != nil {
		h.failBackend(w, rec, notFoundForOthers(err))
		return
	}
	kc, err := container(keys, ids, 0)
	if err != nil {
		h.log.Error("etsi backend broke its contract", "call", rec.call, "err", err)
		h.fail(w, rec, http.StatusServiceUnavailable, "service unavailable", map[string]any{"reason": "internal error"})
		return
	}
	rec.status, rec.outcome = http.StatusOK, "ok"
	writeJSON(w, http.StatusOK, kc)
}

// notFoundForOthers turns a dec_keys refusal because the caller is not named
// for a key (ErrUnauthorized) into the answer for an unknown or already
// fetched key (ErrKeysNotFound, 400): otherwise any SAE could probe whether
// a key ID it learned is still pending (API.md, dec_keys). The backend's
// words stay in the audit record.
func notFoundForOthers(err error) error {
	if errors.Is(err, ErrUnauthorized) && !errors.Is(err, ErrKeysNotFound) {
		return fmt.Errorf("%w (%v)", ErrKeysNotFound, err)
	}
	return err
}

// parseDecQuery reads the GET form of dec_keys: exactly one key_ID.
func parseDecQuery(q url.Values) ([]string, error) {
	for name := range q {
		if name != "key_ID" {
			return nil, badRequest("unsupported query parameter", name, "GET dec_keys accepts only key_ID; use POST for the others")
		}
	}
	vals := q["key_ID"]
	switch len(vals) {
	case 0:
		return nil, badRequest("key_ID is required", "key_ID", "GET dec_keys takes one key_ID query parameter")
	case 1:
		return CheckKeyIDs(vals)
	default:
		return nil, badRequest("query parameter given more than once", "key_ID", "GET dec_keys takes one key_ID; use POST for several")
	}
}
