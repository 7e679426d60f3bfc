package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"qkdkms/etsi"
	"qkdkms/raftstore"
)

// Wire codes: the "code" member of every error answer between nodes, from
// a peer site and of the admin API. The code, not the HTTP status, carries
// an error across a hop (see Table).
const (
	CodeNotLeader      = "not_leader"
	CodeNoLeader       = "no_leader"
	CodeOutcomeUnknown = "outcome_unknown"
	CodeNotEnabled     = "not_enabled"
	CodeUpgrade        = "upgrade_required"
	CodeNotReconciled  = "not_reconciled"
	CodeUnknownSAE     = "unknown_sae"
	CodeUnauthorized   = "unauthorized"
	CodeKeysNotFound   = "keys_not_found"
	CodeInsufficient   = "insufficient_keys"
	CodeConflict       = "conflict"
	CodeBadRequest     = "bad_request"
	CodeForbidden      = "forbidden"
	CodeConnLimit      = "connection_limit"
	CodeUnavailable    = "unavailable"
	CodeInternal       = "internal"
)

// Sentinels of the rows no other package owns.
var (
	// ErrForbidden: the caller's certificate may not use this endpoint.
	ErrForbidden = errors.New("forward: forbidden")
	// ErrNoAnswer: a request left this node but no answer came back, so
	// whether the leader ran it is unknown (a connection reset or a
	// deadline during the call): a raftstore.ErrOutcomeUnknown seen from
	// the caller's side.
	ErrNoAnswer = fmt.Errorf("forward: sent but no answer: %w", raftstore.ErrOutcomeUnknown)
	// ErrConnectionLimit: the site holds its max_connections connections;
	// a registration of a new one is refused and nothing changes (an
	// operator deletes one first: qkdkms conn delete).
	ErrConnectionLimit = errors.New("forward: connection limit reached")
	// ErrInternal: an error no row names (a bug, or a failure the table
	// does not know yet).
	ErrInternal = errors.New("forward: internal error")
)

// Row is one line of the error table.
type Row struct {
	// Code is the wire code.
	Code string
	// Status is the HTTP status an error answer with Code carries on the
	// internal and admin APIs. (The ETSI API answers with
	// etsi.BackendStatus of ETSI.)
	Status int
	// Err is the sentinel a received Code decodes to.
	Err error
	// Also are further sentinels that encode as Code (the raftstore twin
	// of an etsi sentinel, the context errors).
	Also []error
	// ETSI is the etsi sentinel the error reaches the ETSI handler as.
	ETSI error
	// Retry: the leader moved or is unknown and the operation changed
	// nothing, so the forwarder runs it again at whatever node leads next.
	Retry bool
}

// Table maps sentinel errors to wire codes and HTTP statuses: the one
// place where an error crosses a hop (node → leader, site → peer site,
// node → admin client) and where it meets the ETSI handler. CodeOf looks
// rows up in order, so a more specific row comes first.
var Table = []Row{
	{CodeNotLeader, http.StatusMisdirectedRequest, raftstore.ErrNotLeader, nil, etsi.ErrUnavailable, true},
	{CodeNoLeader, http.StatusServiceUnavailable, raftstore.ErrNoLeader, nil, etsi.ErrUnavailable, true},
	{CodeOutcomeUnknown, http.StatusServiceUnavailable, raftstore.ErrOutcomeUnknown, nil, etsi.ErrUnavailable, false},
	{CodeNotEnabled, http.StatusServiceUnavailable, raftstore.ErrNotEnabled, nil, etsi.ErrUnavailable, false},
	{CodeUpgrade, http.StatusServiceUnavailable, raftstore.ErrUpgradeRequired, nil, etsi.ErrUnavailable, false},
	{CodeNotReconciled, http.StatusServiceUnavailable, raftstore.ErrNotReconciled, nil, etsi.ErrUnavailable, false},
	{CodeUnknownSAE, http.StatusUnauthorized, etsi.ErrUnknownSAE, []error{raftstore.ErrConnectionNotFound}, etsi.ErrUnknownSAE, false},
	{CodeUnauthorized, http.StatusUnauthorized, etsi.ErrUnauthorized, []error{raftstore.ErrNotAuthorized}, etsi.ErrUnauthorized, false},
	{CodeForbidden, http.StatusForbidden, ErrForbidden, nil, etsi.ErrUnavailable, false},
	{CodeConnLimit, http.StatusForbidden, ErrConnectionLimit, nil, etsi.ErrBadRequest, false},
	{CodeKeysNotFound, http.StatusBadRequest, etsi.ErrKeysNotFound, []error{raftstore.ErrKeyNotFound}, etsi.ErrKeysNotFound, false},
	{CodeInsufficient, http.StatusServiceUnavailable, etsi.ErrInsufficientKeys, []error{raftstore.ErrInsufficientKeys}, etsi.ErrInsufficientKeys, false},
	{CodeConflict, http.StatusBadRequest, etsi.ErrConflict, []error{raftstore.ErrConnectionExists, raftstore.ErrBlockExists}, etsi.ErrConflict, false},
	{CodeBadRequest, http.StatusBadRequest, etsi.ErrBadRequest, []error{raftstore.ErrInvalid}, etsi.ErrBadRequest, false},
	{CodeUnavailable, http.StatusServiceUnavailable, etsi.ErrUnavailable, []error{raftstore.ErrClosed, context.DeadlineExceeded, context.Canceled}, etsi.ErrUnavailable, false},
	{CodeInternal, http.StatusInternalServerError, ErrInternal, nil, etsi.ErrUnavailable, false},
}

// internalRow answers for an error no row matches; unavailableRow for a
// code this node does not know (a newer node's).
var (
	internalRow    = &Table[len(Table)-1]
	unavailableRow = rowOfCode(CodeUnavailable)
)

func rowOfCode(code string) *Row {
	for i := range Table {
		if Table[i].Code == code {
			return &Table[i]
		}
	}
	return nil
}

// RowOf is the row of err: the first whose Err or Also matches it
// (errors.Is), the internal row when none does. An *Error received from
// another node keeps its own code, even one this node does not know.
func RowOf(err error) *Row {
	var we *Error
	if errors.As(err, &we) {
		if r := rowOfCode(we.Code); r != nil {
			return r
		}
	}
	for i := range Table {
		r := &Table[i]
		if errors.Is(err, r.Err) {
			return r
		}
		for _, a := range r.Also {
			if errors.Is(err, a) {
				return r
			}
		}
	}
	return internalRow
}

// CodeOf is the wire code of err ("" for nil).
func CodeOf(err error) string {
	if err == nil {
		return ""
	}
	var we *Error
	if errors.As(err, &we) && we.Code != "" {
		return we.Code
	}
	return RowOf(err).Code
}

// ErrorOf is the sentinel a received code stands for; a code this node
// does not know is treated as unavailable.
func ErrorOf(code string) error {
	if r := rowOfCode(code); r != nil {
		return r.Err
	}
	return unavailableRow.Err
}

// StatusOf is the HTTP status of an error answer with code.
func StatusOf(code string) int {
	if r := rowOfCode(code); r != nil {
		return r.Status
	}
	return unavailableRow.Status
}

// Retryable reports whether err says the leader moved or is unknown and
// nothing changed: not-leader, no-leader, a request that never left this
// node (never outcome-unknown).
func Retryable(err error) bool {
	return err != nil && RowOf(err).Retry
}

// ToETSI is err as the ETSI handler must see it: wrapping the etsi
// sentinel of its row (unchanged when it already wraps that sentinel).
func ToETSI(err error) error {
	if err == nil {
		return nil
	}
	s := RowOf(err).ETSI
	if errors.Is(err, s) {
		return err
	}
	return fmt.Errorf("%w: %w", s, err)
}

// Error is the body of every error answer (internal API, peer API, admin
// API) and the error a caller decodes it into. Its Unwrap is the sentinel
// of its code, so errors.Is sees through a hop.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Status is the HTTP status it came with (0 when built locally).
	Status int `json:"-"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Unwrap is the sentinel of the code.
func (e *Error) Unwrap() error { return ErrorOf(e.Code) }

// WriteError answers err as an error body: the code and status of its
// row and its text. An *Error received from another node keeps its code
// and status, even a code this node does not know (a newer node's), and,
// passed on as it is, its message.
func WriteError(w http.ResponseWriter, err error) {
	code, status, msg := CodeOf(err), 0, err.Error()
	var we *Error
	if errors.As(err, &we) && we.Code == code {
		status = we.Status
		if err == error(we) {
			msg = we.Message
		}
	}
	if status == 0 {
		status = StatusOf(code)
	}
	WriteCode(w, status, code, msg)
}

// WriteCode answers an error body with an explicit status and code (for
// answers no sentinel stands behind: 404, 405, a refused certificate).
func WriteCode(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Error{Code: code, Message: msg})
}
