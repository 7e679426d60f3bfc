package etsi

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/gorilla/mux"
)

// Seed-compatibility API defaults and bounds (see API.md).
const (
	SeedDefaultMaxKeyCount      = 1000
	SeedDefaultMaxKeyPerRequest = 1
	SeedDefaultMaxSAEIDCount    = 0
	seedMaxKeyCount             = 1 << 24
	seedMaxKeyPerRequest        = 1 << 12
	seedMaxSAEIDCount           = 64
	seedMaxKeySize              = 1 << 20 // bits
)

// SeedKey is the seed API's key answer.
type SeedKey struct {
	KeyID   string `json:"key_id"`
	KeyData string `json:"key_data"` // standard padded base64
}

// SeedRegistered is the answer to register_connection.
type SeedRegistered struct {
	Message    string `json:"message"`
	Connection Status `json:"connection"`
}

// NewSeedHandler serves the seed's plain-HTTP API on b: POST
// /register_connection, GET|POST /get_key?slave_host=… (master side),
// GET|POST /get_key?key_id=… (slave side) and GET /ping. It has no
// authentication at all: the node mounts it only when the operator turns
// it on. audit receives one record per call (nil discards).
func NewSeedHandler(b Backend, audit *slog.Logger) http.Handler {
	h := &handler{b: b, audit: audit, log: audit, maxBody: DefaultMaxBodyBytes}
	if h.audit == nil {
		h.audit, h.log = discard(), discard()
	}
	r := mux.NewRouter()
	r.SkipClean(true)
	r.HandleFunc("/register_connection", h.wrap("seed_register_connection", h.seedRegister)).Methods(http.MethodPost)
	r.HandleFunc("/get_key", h.wrap("seed_get_key", h.seedGetKey)).Methods(http.MethodGet, http.MethodPost)
	r.HandleFunc("/ping", h.wrap("seed_ping", func(w http.ResponseWriter, r *http.Request, rec *auditRec) {
		rec.status, rec.outcome = http.StatusOK, "ok"
		writeJSON(w, http.StatusOK, map[string]any{"message": "pong", "KME_ID": h.b.KMEID(), "time": time.Now().UTC().Format(time.RFC3339)})
	})).Methods(http.MethodGet, http.MethodHead)
	r.MethodNotAllowedHandler = h.wrap("method_not_allowed", func(w http.ResponseWriter, r *http.Request, rec *auditRec) {
		h.fail(w, rec, http.StatusMethodNotAllowed, "method not allowed", map[string]any{"method": r.Method})
	})
	r.NotFoundHandler = h.wrap("not_found", func(w http.ResponseWriter, r *http.Request, rec *auditRec) {
		h.fail(w, rec, http.StatusNotFound, "not found", map[string]any{"path": r.URL.Path})
	})
	return r
}

// DecodeSeedConnection decodes a seed register_connection body for KME
// kmeID: the seed's fields (max_keys_count, or max_key_count, not both)
// plus optional min_key_size, max_key_size and priority; unknown members
// are ignored. Defaults: max_key_count 1000, max_key_per_request 1,
// max_SAE_ID_count 0, min_key_size = max_key_size = key_size, priority 0.
func DecodeSeedConnection(body []byte, kmeID string) (ConnectionInfo, error) {
	var c ConnectionInfo
	m, err := parseObject(body)
	if err != nil {
		return c, err
	}
	str := func(name string) (string, error) {
		raw, ok := m[name]
		if !ok || isNull(raw) {
			return "", badRequest(name+" is required", name, "missing")
		}
		s, err := parseString(name, raw)
		if err != nil {
			return "", err
		}
		if !ValidSAEID(s) {
			return "", badRequest("invalid "+name, name, "1-128 printable characters without '/', '\\', ':' or spaces")
		}
		return s, nil
	}
	num := func(name string, def, lo, hi int) (int, error) {
		raw, ok := m[name]
		if !ok || isNull(raw) {
			if def < 0 {
				return 0, badRequest(name+" is required", name, "missing")
			}
			return def, nil
		}
		n, err := parseInt(name, raw)
		if err != nil {
			return 0, err
		}
		if n < lo || n > hi {
			return 0, badRequest(name+" out of range", name, fmt.Sprintf("%d outside [%d, %d]", n, lo, hi))
		}
		return n, nil
	}
	if c.SourceKME, err = str("source_KME_ID"); err != nil {
		return c, err
	}
	if c.TargetKME, err = str("target_KME_ID"); err != nil {
		return c, err
	}
	if c.MasterSAE, err = str("master_SAE_ID"); err != nil {
		return c, err
	}
	if c.SlaveSAE, err = str("slave_SAE_ID"); err != nil {
		return c, err
	}
	if c.SourceKME == c.TargetKME {
		return c, badRequest("source and target KME shall differ", "target_KME_ID", "a connection joins two sites")
	}
	if c.MasterSAE == c.SlaveSAE {
		return c, badRequest("master and slave SAE shall differ", "slave_SAE_ID", "same SAE ID")
	}
	if kmeID != c.SourceKME && kmeID != c.TargetKME {
		return c, badRequest("this KME is neither source nor target", "source_KME_ID", "this KME is "+kmeID)
	}
	if c.KeySize, err = num("key_size", -1, 8, seedMaxKeySize); err != nil {
		return c, err
	}
	if c.KeySize%8 != 0 {
		return c, badRequest(MsgSizeMultipleOf8, "key_size", fmt.Sprintf("key_size %d", c.KeySize))
	}
	_, hasSeed := m["max_keys_count"]
	_, hasETSI := m["max_key_count"]
	if hasSeed && hasETSI {
		return c, badRequest("give max_keys_count or max_key_count, not both", "max_key_count", "ambiguous")
	}
	countName := "max_key_count"
	if hasSeed {
		countName = "max_keys_count"
	}
	if c.MaxKeyCount, err = num(countName, SeedDefaultMaxKeyCount, 1, seedMaxKeyCount); err != nil {
		return c, err
	}
	if c.MaxKeyPerRequest, err = num("max_key_per_request", SeedDefaultMaxKeyPerRequest, 1, seedMaxKeyPerRequest); err != nil {
		return c, err
	}
	if c.MaxSAEIDCount, err = num("max_SAE_ID_count", SeedDefaultMaxSAEIDCount, 0, seedMaxSAEIDCount); err != nil {
		return c, err
	}
	if c.MinKeySize, err = num("min_key_size", c.KeySize, 8, seedMaxKeySize); err != nil {
		return c, err
	}
	if c.MaxKeySize, err = num("max_key_size", c.KeySize, 8, seedMaxKeySize); err != nil {
		return c, err
	}
	if c.MinKeySize%8 != 0 || c.MaxKeySize%8 != 0 {
		return c, badRequest(MsgSizeMultipleOf8, "min_key_size", "min_key_size and max_key_size shall be multiples of 8")
	}
	if c.MinKeySize > c.KeySize || c.KeySize > c.MaxKeySize {
		return c, badRequest("min_key_size ≤ key_size ≤ max_key_size is required", "key_size",
			fmt.Sprintf("%d, %d, %d", c.MinKeySize, c.KeySize, c.MaxKeySize))
	}
	if c.MaxKeyPerRequest > c.MaxKeyCount {
		return c, badRequest("max_key_per_request shall not exceed max_key_count", "max_key_per_request",
			fmt.Sprintf("%d > %d", c.MaxKeyPerRequest, c.MaxKeyCount))
	}
	if c.Priority, err = num("priority", 0, 0, 1000); err != nil {
		return c, err
	}
	return c, nil
}

func (h *handler) seedRegister(w http.ResponseWriter, r *http.Request, rec *auditRec) {
	body, ok := h.readBody(w, r, rec)
	if !ok {
		return
	}
	c, err := DecodeSeedConnection(body, h.b.KMEID())
	if err != nil {
		h.failRequest(w, rec, err)
		return
	}
	rec.sae, rec.pathSAE = c.MasterSAE, c.SlaveSAE
	ctx, cancel := h.ctx(r)
	defer cancel()
	if err := h.b.RegisterConnection(ctx, c); err != nil {
		h.failBackend(w, rec, err)
		return
	}
	if got, err := h.b.Connection(ctx, c.MasterSAE, c.SlaveSAE); err == nil {
		c = got
	}
	rec.status, rec.outcome = http.StatusOK, "ok"
	writeJSON(w, http.StatusOK, SeedRegistered{Message: "connection registered", Connection: StatusOf(c)})
}

func (h *handler) seedGetKey(w http.ResponseWriter, r *http.Request, rec *auditRec) {
	body, ok := h.readBody(w, r, rec)
	if !ok {
		return
	}
	if len(body) != 0 {
		h.fail(w, rec, http.StatusBadRequest, "get_key takes its parameters in the query",
			map[string]any{"reason": "the request body shall be empty"})
		return
	}
	q := r.URL.Query()
	for name, vals := range q {
		if name != "slave_host" && name != "key_id" {
			h.fail(w, rec, http.StatusBadRequest, "unsupported query parameter", map[string]any{"parameter": name})
			return
		}
		if len(vals) != 1 {
			h.fail(w, rec, http.StatusBadRequest, "query parameter given more than once", map[string]any{"parameter": name})
			return
		}
	}
	_, bySlave := q["slave_host"]
	_, byID := q["key_id"]
	if bySlave == byID {
		h.fail(w, rec, http.StatusBadRequest, "give exactly one of slave_host and key_id",
			map[string]any{"reason": "slave_host asks for a new key (master side), key_id fetches one (slave side)"})
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	if byID {
		ids, err := CheckKeyIDs([]string{q.Get("key_id")})
		if err != nil {
			h.failRequest(w, rec, err)
			return
		}
		rec.keyIDs = ids
		keys, err := h.b.DecKeys(ctx, DecRequest{KeyIDs: ids, Seed: true})
		if err != nil {
			h.failBackend(w, rec, err)
			return
		}
		h.seedAnswer(w, rec, keys, ids, 0)
		return
	}
	slave := q.Get("slave_host")
	rec.pathSAE = slave
	if !ValidSAEID(slave) {
		h.fail(w, rec, http.StatusBadRequest, "invalid slave_host", map[string]any{"parameter": "slave_host"})
		return
	}
	conns, err := h.b.ConnectionsOf(ctx, slave)
	if err != nil && !errors.Is(err, ErrUnknownSAE) {
		h.failBackend(w, rec, err)
		return
	}
	var found []ConnectionInfo
	for _, c := range conns {
		if c.SlaveSAE == slave && c.SourceKME == h.b.KMEID() {
			found = append(found, c)
		}
	}
	switch len(found) {
	case 0:
		h.fail(w, rec, http.StatusNotFound, "no connection with this slave SAE at this KME",
			map[string]any{"parameter": "slave_host", "value": slave})
		return
	case 1:
	default:
		h.fail(w, rec, http.StatusBadRequest, "several masters have a connection with this slave SAE; use the ETSI API",
			map[string]any{"parameter": "slave_host", "value": slave})
		return
	}
	c := found[0]
	rec.sae, rec.number, rec.size = c.MasterSAE, 1, c.KeySize
	keys, err := h.b.EncKeys(ctx, EncRequest{MasterSAE: c.MasterSAE, SlaveSAE: slave, Number: 1, Size: c.KeySize})
	if err != nil {
		h.failBackend(w, rec, err)
		return
	}
	h.seedAnswer(w, rec, keys, nil, c.KeySize)
}

func (h *handler) seedAnswer(w http.ResponseWriter, rec *auditRec, keys []Key, order []string, size int) {
	kc, err := container(keys, order, size)
	if err == nil && len(kc.Keys) != 1 {
		err = fmt.Errorf("backend returned %d keys for 1", len(kc.Keys))
	}
	if err != nil {
		h.log.Error("etsi backend broke its contract", "call", rec.call, "err", err)
		h.fail(w, rec, http.StatusServiceUnavailable, "service unavailable", map[string]any{"reason": "internal error"})
		return
	}
	rec.keyIDs = []string{kc.Keys[0].KeyID}
	rec.status, rec.outcome = http.StatusOK, "ok"
	writeJSON(w, http.StatusOK, SeedKey{KeyID: kc.Keys[0].KeyID, KeyData: kc.Keys[0].Key})
}
