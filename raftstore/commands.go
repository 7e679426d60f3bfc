package raftstore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Raft command encoding: one type byte, one version byte, then a JSON body
// decoded strictly (unknown fields and trailing data are errors). A command
// that cannot be decoded makes Apply panic: replicas must never silently
// diverge.

type cmdType byte

const (
	cmdRegister cmdType = 1
	cmdUpdate   cmdType = 2
	cmdDelete   cmdType = 3
	cmdAddBlock cmdType = 4
	cmdIssue    cmdType = 5
	cmdRecord   cmdType = 6
	cmdConsume  cmdType = 7
	cmdBurn     cmdType = 8
	cmdBatch    cmdType = 9
)

const cmdVersion = 1

func (t cmdType) String() string {
	switch t {
	case cmdRegister:
		return "register"
	case cmdUpdate:
		return "update"
	case cmdDelete:
		return "delete"
	case cmdAddBlock:
		return "add_block"
	case cmdIssue:
		return "issue"
	case cmdRecord:
		return "record"
	case cmdConsume:
		return "consume"
	case cmdBurn:
		return "burn"
	case cmdBatch:
		return "batch"
	}
	return fmt.Sprintf("cmd(%d)", byte(t))
}

// Every command carries At, the leader's clock (unix ns) when it was built;
// the FSM uses it (never its own clock) for request-table aging.

type registerCmd struct {
	At   int64      `json:"at"`
	Conn Connection `json:"conn"`
}

type deleteCmd struct {
	At     int64  `json:"at"`
	Master string `json:"master"`
	Slave  string `json:"slave"`
}

type addBlockCmd struct {
	At      int64  `json:"at"`
	ConnID  string `json:"conn"`
	BlockID string `json:"block"`
	Bytes   int    `json:"bytes"`   // plaintext length
	Wrapped []byte `json:"wrapped"` // data key sealed with the KEK
	Sealed  []byte `json:"sealed"`  // block sealed with the data key, chunk by chunk
}

type issueCmd struct {
	At        int64     `json:"at"`
	RequestID string    `json:"request_id"`
	MasterSAE string    `json:"master"`
	SlaveSAE  string    `json:"slave"`
	Slaves    []string  `json:"slaves"`
	Size      int       `json:"size"`
	KeyIDs    []string  `json:"key_ids"`
	IssuedAt  time.Time `json:"issued_at"`
}

type recordCmd struct {
	At         int64      `json:"at"`
	Assignment Assignment `json:"assignment"`
}

type consumeCmd struct {
	At        int64    `json:"at"`
	RequestID string   `json:"request_id"`
	Caller    string   `json:"caller"`
	MasterSAE string   `json:"master"`
	KeyIDs    []string `json:"key_ids"`
}

type burnCmd struct {
	At     int64    `json:"at"`
	KeyIDs []string `json:"key_ids"`
}

type batchCmd struct {
	Cmds [][]byte `json:"cmds"`
}

func encodeCmd(t cmdType, body any) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte(byte(t))
	buf.WriteByte(cmdVersion)
	if err := json.NewEncoder(&buf).Encode(body); err != nil {
		return nil, fmt.Errorf("raftstore: encode %s: %w", t, err)
	}
	return buf.Bytes(), nil
}

func newCmdBody(t cmdType) any {
	switch t {
	case cmdRegister, cmdUpdate:
		return &registerCmd{}
	case cmdDelete:
		return &deleteCmd{}
	case cmdAddBlock:
		return &addBlockCmd{}
	case cmdIssue:
		return &issueCmd{}
	case cmdRecord:
		return &recordCmd{}
	case cmdConsume:
		return &consumeCmd{}
	case cmdBurn:
		return &burnCmd{}
	case cmdBatch:
		return &batchCmd{}
	}
	return nil
}

var errUndecodable = errors.New("raftstore: undecodable command")

// decodeCmd decodes one command strictly.
func decodeCmd(data []byte) (cmdType, any, error) {
	if len(data) < 2 {
		return 0, nil, fmt.Errorf("%w: %d bytes", errUndecodable, len(data))
	}
	t := cmdType(data[0])
	if data[1] != cmdVersion {
		return t, nil, fmt.Errorf("%w: %s version %d unsupported", errUndecodable, t, data[1])
	}
	body := newCmdBody(t)
	if body == nil {
		return t, nil, fmt.Errorf("%w: unknown type %d", errUndecodable, data[0])
	}
	dec := json.NewDecoder(bytes.NewReader(data[2:]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(body); err != nil {
		return t, nil, fmt.Errorf("%w: %s: %w", errUndecodable, t, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return t, nil, fmt.Errorf("%w: %s: trailing data", errUndecodable, t)
	}
	return t, body, nil
}

// Error codes stored in the request table so that a retried command returns
// its first result.
var errCodes = []error{nil, ErrConnectionExists, ErrConnectionNotFound, ErrInsufficientKeys,
	ErrKeyNotFound, ErrNotAuthorized, ErrInvalid, ErrBlockExists}

func errCode(err error) int {
	for i, e := range errCodes[1:] {
		if errors.Is(err, e) {
			return i + 1
		}
	}
	if err != nil {
		return len(errCodes) // unknown; should not happen
	}
	return 0
}

func codeErr(c int) error {
	if c == 0 {
		return nil
	}
	if c < len(errCodes) {
		return errCodes[c]
	}
	return ErrInvalid
}
