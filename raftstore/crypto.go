package raftstore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// KEKSize is the size of the site key-encryption key in bytes (AES-256).
const KEKSize = 32

// ErrBadKEK: the key-encryption key is missing, malformed or its file is
// readable by others.
var ErrBadKEK = errors.New("raftstore: bad key-encryption key")

// blockChunk is the plaintext size of one sealed chunk of a block. Blocks are
// sealed chunk by chunk so that answering a request for one 256-bit key only
// opens the chunk(s) holding it, not the whole block.
const blockChunk = 1024

const gcmOverhead = 16

// LoadKEK reads a 32-byte key-encryption key from path, either as 32 raw
// bytes or as 64 hex digits (surrounding white space ignored). The file must
// not be accessible by group or others (mode 0600 or stricter); a looser mode
// is refused.
func LoadKEK(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKEK, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %#o, must be 0600 or stricter (chmod 600 %s)",
			ErrBadKEK, path, fi.Mode().Perm(), path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKEK, err)
	}
	return parseKEK(raw, path)
}

// KEKFromEnv reads a hex-encoded 32-byte key-encryption key from the
// environment variable name.
func KEKFromEnv(name string) ([]byte, error) {
	v, ok := os.LookupEnv(name)
	if !ok || strings.TrimSpace(v) == "" {
		return nil, fmt.Errorf("%w: environment variable %s is not set", ErrBadKEK, name)
	}
	return parseKEK([]byte(v), "$"+name)
}

func parseKEK(raw []byte, from string) ([]byte, error) {
	if len(raw) == KEKSize {
		return append([]byte(nil), raw...), nil
	}
	s := strings.TrimSpace(string(raw))
	if len(s) == 2*KEKSize {
		k, err := hex.DecodeString(s)
		if err == nil {
			return k, nil
		}
	}
	return nil, fmt.Errorf("%w: %s must hold %d raw bytes or %d hex digits", ErrBadKEK, from, KEKSize, 2*KEKSize)
}

// GenerateKEK writes a new random key-encryption key, hex-encoded, to path
// with mode 0600. It refuses to overwrite an existing file.
func GenerateKEK(path string) ([]byte, error) {
	k := make([]byte, KEKSize)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("raftstore: generate KEK: %w", err)
	}
	if _, err := f.WriteString(hex.EncodeToString(k) + "\n"); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	return k, f.Close()
}

func newGCM(key []byte) (cipher.AEAD, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("%w: key must be 32 bytes, got %d", ErrBadKEK, len(key))
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func appendLP(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func dkAAD(connID, blockID string) []byte {
	b := []byte("qkdkms/dk/v1")
	b = appendLP(b, connID)
	return appendLP(b, blockID)
}

func chunkAAD(connID, blockID string, idx, total int) []byte {
	b := []byte("qkdkms/block/v1")
	b = appendLP(b, connID)
	b = appendLP(b, blockID)
	b = binary.BigEndian.AppendUint32(b, uint32(idx))
	return binary.BigEndian.AppendUint32(b, uint32(total))
}

func chunkNonce(idx int) []byte {
	n := make([]byte, 12)
	binary.BigEndian.PutUint64(n[4:], uint64(idx))
	return n
}

func numChunks(n int) int { return (n + blockChunk - 1) / blockChunk }

// sealedLen is the ciphertext length of a block of n plaintext bytes.
func sealedLen(n int) int { return n + numChunks(n)*gcmOverhead }

// sealBlock encrypts a block with a fresh data key and wraps the data key with
// the KEK. The result carries no plaintext. AAD binds the connection and block
// IDs (and each chunk's position) so ciphertext cannot be moved elsewhere.
func sealBlock(kek []byte, connID, blockID string, plain []byte) (wrapped, sealed []byte, err error) {
	dk := make([]byte, 32)
	if _, err := rand.Read(dk); err != nil {
		return nil, nil, err
	}
	defer clear(dk)
	kg, err := newGCM(kek)
	if err != nil {
		return nil, nil, err
	}
	nonce := make([]byte, kg.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, nil, err
	}
	wrapped = kg.Seal(nonce, nonce, dk, dkAAD(connID, blockID))
	dg, err := newGCM(dk)
	if err != nil {
		return nil, nil, err
	}
	total := numChunks(len(plain))
	sealed = make([]byte, 0, sealedLen(len(plain)))
	for i := 0; i < total; i++ {
		end := min((i+1)*blockChunk, len(plain))
		sealed = dg.Seal(sealed, chunkNonce(i), plain[i*blockChunk:end], chunkAAD(connID, blockID, i, total))
	}
	return wrapped, sealed, nil
}

// openRange decrypts n plaintext bytes starting at byte off of a sealed
// block, into dst (len n). Only the chunks covering the range are opened.
func openRange(kek []byte, connID string, b *blockRec, off, n int, dst []byte) error {
	kg, err := newGCM(kek)
	if err != nil {
		return err
	}
	ns := kg.NonceSize()
	if len(b.wrapped) < ns {
		return errors.New("raftstore: wrapped data key too short")
	}
	dk, err := kg.Open(nil, b.wrapped[:ns], b.wrapped[ns:], dkAAD(connID, b.id))
	if err != nil {
		return fmt.Errorf("raftstore: unwrap data key of block %s (wrong KEK?): %w", b.id, err)
	}
	defer clear(dk)
	dg, err := newGCM(dk)
	if err != nil {
		return err
	}
	total := numChunks(b.bytes)
	buf := make([]byte, 0, blockChunk)
	defer clear(buf[:cap(buf)])
	for i := off / blockChunk; i*blockChunk < off+n; i++ {
		plainLen := min(blockChunk, b.bytes-i*blockChunk)
		cs := i * (blockChunk + gcmOverhead)
		ct := b.sealed[cs : cs+plainLen+gcmOverhead]
		pt, err := dg.Open(buf[:0], chunkNonce(i), ct, chunkAAD(connID, b.id, i, total))
		if err != nil {
			return fmt.Errorf("raftstore: open block %s chunk %d: %w", b.id, i, err)
		}
		// copy the overlap of [off, off+n) with this chunk
		cStart := i * blockChunk
		from := max(off, cStart)
		to := min(off+n, cStart+plainLen)
		copy(dst[from-off:to-off], pt[from-cStart:to-cStart])
	}
	return nil
}
