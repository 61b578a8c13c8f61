package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"

	"github.com/labstack/echo/v4"
)

// readBody reads the whole request body (already bounded by the body limit).
func readBody(c echo.Context) ([]byte, error) {
	b, err := io.ReadAll(c.Request().Body)
	if err != nil {
		// Over the limit: http.MaxBytesReader's error, or echo's BodyLimit
		// reader's when the size is only known while reading (a chunked or
		// gzip-compressed body).
		var mbe *http.MaxBytesError
		var he *echo.HTTPError
		if errors.As(err, &mbe) || (errors.As(err, &he) && he.Code == http.StatusRequestEntityTooLarge) {
			return nil, echo.ErrStatusRequestEntityTooLarge
		}
		return nil, badRequest("unreadable_body", "could not read the request body")
	}
	return b, nil
}

// strictJSON decodes JSON into v, refusing unknown fields and trailing data.
func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("invalid_json", "the body is not valid JSON for this endpoint: %s", describeJSONError(err))
	}
	if dec.More() {
		return badRequest("invalid_json", "the body holds more than one JSON value")
	}
	return nil
}

func describeJSONError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field != "" {
			return fmt.Sprintf("field %q must be %s, not a JSON %s", te.Field, jsonKind(te.Type), te.Value)
		}
		return fmt.Sprintf("expected %s, not a JSON %s", jsonKind(te.Type), te.Value)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%s (at byte %d)", se.Error(), se.Offset)
	}
	if errors.Is(err, io.EOF) {
		return "the body is empty"
	}
	return err.Error()
}

// jsonKind names the JSON a Go type is read from, so that messages speak
// JSON, not the server's Go types.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Pointer:
		return jsonKind(t.Elem())
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	}
	return "another JSON type"
}

// bind decodes a strict JSON body into v.
func bind(c echo.Context, v any) error {
	b, err := readBody(c)
	if err != nil {
		return err
	}
	return strictJSON(b, v)
}

// bindOneOrMany decodes either one item or {"<key>": [items]}.
func bindOneOrMany[T any](c echo.Context, key string) ([]T, error) {
	b, err := readBody(c)
	if err != nil {
		return nil, err
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, badRequest("invalid_json", "the body must be a JSON object: %s", describeJSONError(err))
	}
	if list, ok := probe[key]; ok {
		if len(probe) != 1 {
			return nil, badRequest("invalid_json", "a body with %q must have no other field", key)
		}
		var items []T
		if err := strictJSON(list, &items); err != nil {
			return nil, err
		}
		return items, nil
	}
	var one T
	if err := strictJSON(b, &one); err != nil {
		return nil, err
	}
	return []T{one}, nil
}
