package simdaccel

import (
	"encoding/binary"
	"slices"

	"github.com/dwcp/dwcp/sdk/accel"
	"github.com/zeebo/xxh3"
)

// hashPages appends the XXH3-128 of each page, high half first, both
// big-endian, as accel.OpHashXXH3 specifies.
func hashPages(dst []byte, pageSize int64, in []byte) ([]byte, error) {
	n, err := pageCount(accel.OpHashXXH3, pageSize, in)
	if err != nil {
		return dst, err
	}
	ps := int(pageSize)
	dst = slices.Grow(dst, 16*n)
	for i := range n {
		h := xxh3.Hash128(in[i*ps : (i+1)*ps])
		dst = binary.BigEndian.AppendUint64(dst, h.Hi)
		dst = binary.BigEndian.AppendUint64(dst, h.Lo)
	}
	return dst, nil
}
