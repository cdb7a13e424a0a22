package health

import "regexp"

// mask replaces a secret in reported text.
const mask = "xxxxx"

var (
	// keyValueSecret matches password=value and sslpassword=value as libpq
	// keyword/value strings and URL query strings write them, with the
	// value quoted or bare.
	keyValueSecret = regexp.MustCompile(`(?i)\b((?:ssl)?password)\s*=\s*('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s&]*)`)
	// urlSecret matches the :password@ of a URL's user info. It runs to
	// the last @ before a space, since a password may hold an @ of its
	// own; masking a little too much is safe.
	urlSecret = regexp.MustCompile(`(://[^:/@\s]*):\S*@`)
)

// scrub masks anything in s that looks like a password. The Database is
// responsible for its error texts; this is the second line of defence,
// because the texts end up in responses to unauthenticated probes.
func scrub(s string) string {
	s = urlSecret.ReplaceAllString(s, "${1}:"+mask+"@")
	return keyValueSecret.ReplaceAllString(s, "${1}="+mask)
}
