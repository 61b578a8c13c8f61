package delivery

import (
	"bufio"
	"bytes"
	"net/textproto"
	"testing"
)

// dotWritten is data as the DATA content textproto's DotWriter makes of it,
// through the end of DATA.
func dotWritten(t testing.TB, data []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	w := textproto.NewWriter(bw).DotWriter()
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// dataWritten is the same through writeData.
func dataWritten(t testing.TB, data []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	w := textproto.NewWriter(bw).DotWriter()
	if err := writeData(bw, w, data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

var writeDataCases = []string{
	"",
	"\r\n",
	"Subject: hi\r\n\r\nbody\r\n",
	".leading dot\r\nsecond\r\n",
	"a\r\n.b\r\n..c\r\n.\r\n",
	"ends with a dot line\r\n.\r\n",
	"no final line end",
	"bare\nline feeds\n",
	"lone\rcarriage return\r\n",
	"double\r\r\nreturn\r\n",
	"\r\n.\r\n.\r\n",
	"mixed\r\n.dot\nbare\r\n",
}

// writeData writes what the DotWriter writes.
func TestWriteDataIsDotStuffing(t *testing.T) {
	for _, c := range writeDataCases {
		if got, want := dataWritten(t, []byte(c)), dotWritten(t, []byte(c)); !bytes.Equal(got, want) {
			t.Errorf("%q: wrote %q, want %q", c, got, want)
		}
	}
}

func FuzzWriteData(f *testing.F) {
	for _, c := range writeDataCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if got, want := dataWritten(t, data), dotWritten(t, data); !bytes.Equal(got, want) {
			t.Errorf("%q: wrote %q, want %q", data, got, want)
		}
	})
}
