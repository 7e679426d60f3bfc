package raftstore

import (
	"bytes"
	"encoding/binary"
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
	cmdDrop     cmdType = 10
	cmdPads     cmdType = 11
	cmdPlugin   cmdType = 12
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
	case cmdDrop:
		return "drop_last_block"
	case cmdPads:
		return "pads"
	case cmdPlugin:
		return "plugin"
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
	// QKD link blocks (see Block.LinkPeer): pad material sealed the same way.
	LinkPeer    string `json:"link_peer,omitempty"`
	AuthBytes   int    `json:"auth_bytes,omitempty"`
	AuthWrapped []byte `json:"auth_wrapped,omitempty"`
	AuthSealed  []byte `json:"auth_sealed,omitempty"`
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

// batchCmd carries many encoded commands in one log entry. Its body is
// binary, not JSON: uvarint count, then per member uvarint length + bytes.
type batchCmd struct {
	Cmds [][]byte
}

func encodeBatch(cmds [][]byte) []byte {
	n := 2 + binary.MaxVarintLen64
	for _, c := range cmds {
		n += binary.MaxVarintLen64 + len(c)
	}
	buf := make([]byte, 0, n)
	buf = append(buf, byte(cmdBatch), cmdVersion)
	buf = binary.AppendUvarint(buf, uint64(len(cmds)))
	for _, c := range cmds {
		buf = binary.AppendUvarint(buf, uint64(len(c)))
		buf = append(buf, c...)
	}
	return buf
}

func decodeBatch(b []byte) (*batchCmd, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n == 0 || n > uint64(len(b)) {
		return nil, fmt.Errorf("%w: batch: bad count", errUndecodable)
	}
	b = b[k:]
	out := &batchCmd{Cmds: make([][]byte, 0, n)}
	for i := uint64(0); i < n; i++ {
		l, k := binary.Uvarint(b)
		if k <= 0 || l < 2 || l > uint64(len(b)-k) {
			return nil, fmt.Errorf("%w: batch member %d: bad length", errUndecodable, i)
		}
		out.Cmds = append(out.Cmds, b[k:k+int(l)])
		b = b[k+int(l):]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: batch: trailing data", errUndecodable)
	}
	return out, nil
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
	case cmdDrop:
		return &dropCmd{}
	case cmdPads:
		return &padsCmd{}
	case cmdPlugin:
		return &pluginCmd{}
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
	if t == cmdBatch {
		b, err := decodeBatch(data[2:])
		return t, b, err
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

// Error codes a request-table entry may carry (entries are only written for
// successes today, code 0; the field keeps the snapshot format open).
var errCodes = []error{nil, ErrConnectionExists, ErrConnectionNotFound, ErrInsufficientKeys,
	ErrKeyNotFound, ErrNotAuthorized, ErrInvalid, ErrBlockExists}

func codeErr(c int) error {
	if c == 0 {
		return nil
	}
	if c < len(errCodes) {
		return errCodes[c]
	}
	return ErrInvalid
}
