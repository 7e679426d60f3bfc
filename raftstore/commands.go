package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Raft command encoding (docs/RAFT-FORMAT.md): one type byte, one version
// byte, then a body, JSON decoded strictly (unknown fields and trailing data
// are errors) except for batch. Every (type, version) pair has one entry in
// the registry (registry.go): its name, body, applier and the cluster
// version that enables it.

type cmdType byte

// Command types. A number is never reused: a retired command keeps its
// registry entry for as long as old logs may hold it.
const (
	cmdRegister       cmdType = 1
	cmdUpdate         cmdType = 2
	cmdDelete         cmdType = 3
	cmdAddBlock       cmdType = 4
	cmdIssue          cmdType = 5
	cmdRecord         cmdType = 6
	cmdConsume        cmdType = 7
	cmdBurn           cmdType = 8
	cmdBatch          cmdType = 9
	cmdDrop           cmdType = 10
	cmdPads           cmdType = 11
	cmdPlugin         cmdType = 12
	cmdClusterVersion cmdType = 13
	cmdImport         cmdType = 14
	cmdReconcile      cmdType = 15
	cmdRelay          cmdType = 16
	cmdRelayEnd       cmdType = 17
)

func (t cmdType) String() string {
	if e := registry.latest(t, MaxVersion); e != nil {
		return e.name
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

// clusterVersionCmd raises the cluster version to Version (never lowers
// it). The leader proposes it once every configuration member reported
// support (docs/RAFT-FORMAT.md "Cluster version").
type clusterVersionCmd struct {
	At      int64 `json:"at"`
	Version uint8 `json:"version"`
}

// importCmd records (Done false) or clears (Done true) the block whose
// import at both sites is half done on connection Conn, so that any
// leader of this site continues it (node/kme ImportBlock).
type importCmd struct {
	At    int64  `json:"at"`
	Conn  string `json:"conn"`
	Block string `json:"block"`
	Done  bool   `json:"done,omitempty"`
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
	buf = append(buf, byte(cmdBatch), 1)
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

var errUndecodable = errors.New("raftstore: undecodable command")

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
