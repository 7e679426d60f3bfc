package checker

import (
	"encoding/base64"
	binenc "encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// AtRestHit is one key found in plaintext in a file (invariant I5, README).
type AtRestHit struct {
	File     string `json:"file"`
	Offset   int64  `json:"offset"`
	Encoding string `json:"encoding"` // raw, base64, hex
}

// ScanAtRest looks for every key (raw bytes, standard base64 and lowercase
// hex) in every regular file under dirs. Keys shorter than 8 bytes are
// skipped (they match by chance). It returns one hit per file, key and
// encoding found.
func ScanAtRest(dirs []string, keys [][]byte) ([]AtRestHit, error) {
	type pattern struct {
		b   []byte
		enc string
	}
	byPrefix := map[uint64][]pattern{}
	add := func(b []byte, enc string) {
		byPrefix[binenc.LittleEndian.Uint64(b[:8])] = append(byPrefix[binenc.LittleEndian.Uint64(b[:8])], pattern{b, enc})
	}
	for _, k := range keys {
		if len(k) < 8 {
			continue
		}
		add(k, "raw")
		add([]byte(base64.StdEncoding.EncodeToString(k)), "base64")
		add([]byte(hex.EncodeToString(k)), "hex")
	}
	var hits []AtRestHit
	if len(byPrefix) == 0 {
		return nil, nil
	}
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if !d.Type().IsRegular() {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			seen := map[string]bool{}
			for i := 0; i+8 <= len(b); i++ {
				ps, ok := byPrefix[binenc.LittleEndian.Uint64(b[i:i+8])]
				if !ok {
					continue
				}
				for _, p := range ps {
					if i+len(p.b) <= len(b) && string(b[i:i+len(p.b)]) == string(p.b) {
						id := p.enc + string(p.b)
						if !seen[id] {
							seen[id] = true
							hits = append(hits, AtRestHit{File: path, Offset: int64(i), Encoding: p.enc})
						}
					}
				}
			}
			return nil
		})
		if err != nil {
			return hits, fmt.Errorf("checker: at-rest scan: %w", err)
		}
	}
	return hits, nil
}
