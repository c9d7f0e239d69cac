/* The step checker of curation/steps.py in C: the same tokens, parser and verdicts, ~36x faster.
 *
 * `check(text)` returns (checked, skipped, [false claim, ...]) exactly as steps.py's Python path
 * would, or None where it cannot promise that (a number past 2^125, a fractional power, nesting past
 * 100 levels, a non-ASCII decimal digit): the caller then runs the Python path. `check_many` does
 * the same over a list. Every function below is named for the Python function it mirrors; where the
 * Python reads a regular expression, the comment quotes it. tests/curation/test_stepscan.py holds
 * the two paths to the same answers on GSM8K, MATH-500, the hand-written cases and random text.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

typedef Py_UCS4 ch_t;
typedef Py_ssize_t idx;
typedef __int128 i128;

/* ---------------------------------------------------------------- characters (as `re` and str see them) */

enum { A_LETTER = 1, A_ALNUM = 2 };
static unsigned char ascii[128]; /* A_* bits of each ASCII character, filled at import */
/* The token kind + 1 of an ASCII character that is a whole token by itself whatever follows (brackets,
 * punctuation, + - / ^), 0 for the rest; filled at import. */
static signed char alone[128];
static inline int is_space(ch_t c) { return Py_UNICODE_ISSPACE(c); }
static inline int is_dec(ch_t c) { return c >= '0' && c <= '9'; } /* other decimals: the caller bails */
static inline int is_ascii_letter(ch_t c) { return c < 128 && (ascii[c] & A_LETTER); }
static inline int is_alnum(ch_t c) { return c < 128 ? ascii[c] & A_ALNUM : Py_UNICODE_ISALNUM(c); }
static inline int is_word(ch_t c) { return c == '_' || is_alnum(c); }
static inline int is_alpha(ch_t c) { return c < 128 ? is_ascii_letter(c) : Py_UNICODE_ISALPHA(c); }
static inline int is_digit(ch_t c) { return c < 128 ? is_dec(c) : Py_UNICODE_ISDIGIT(c); }
static inline int is_cur(ch_t c) { return c == '$' || c == 0x20AC || c == 0xA3 || c == 0xA5; }
static inline int is_sup(ch_t c) { return c == 0x2070 || c == 0xB9 || c == 0xB2 || c == 0xB3 || (c >= 0x2074 && c <= 0x2079); }
static inline int sup_digit(ch_t c) { return c == 0xB9 ? 1 : c == 0xB2 ? 2 : c == 0xB3 ? 3 : (int)(c - 0x2070); }

/* ---------------------------------------------------------------- word sets (steps.py's frozensets) */

static const char *NOT_UNITS[] = {"times", "plus", "minus", "over", "divided", "multiplied", "by", "of", "and", "or",
    "than", "less", "more", "fewer", "per", "into", "from", "to", "squared", "cubed", "sqrt", "root", "log", "ln", "sin",
    "cos", "tan", "exp", "mod", "pi", "dozen", "dozens", "hundred", "hundreds", "thousand", "thousands", "million",
    "millions", "billion", "billions", "trillion", "half", "halves", "third", "thirds", "quarter", "quarters", "twice",
    "double", "triple", "percent", "is", "are", "was", "were", "be", "equals", "equal", "gives", "makes", "because",
    "so", "then", "thus", "hence", "which", "that", "this", "it", "he", "she", "they", "we", "you", "the", "an", "in",
    "on", "at", "for", "with", "after", "before", "if", "but", "not", "there", "here", "now", "also", "total", "left",
    "remaining", "only", "just", "about", "am", "pm", "means", "mean", "becomes", "yields", "costs"};
static const char *CONNECTIVES[] = {"times", "plus", "minus", "over", "by", "than", "into", "from", "divided",
    "multiplied", "per", "twice", "thrice", "double", "triple", "half", "less", "more", "fewer", "squared", "cubed",
    "sqrt", "root", "add", "adding", "subtract", "subtracting", "multiply", "multiplying", "divide", "dividing", "x",
    "log", "ln", "sin", "cos", "tan", "exp", "mod", "choose"};
static const char *LABELS[] = {"day", "week", "month", "year", "step", "page", "chapter", "case", "part", "level",
    "round", "game", "question", "problem", "grade", "floor", "room", "row", "line", "option", "stage", "phase"};
static const char *FRACTION_WORDS[] = {"half", "halves", "third", "thirds", "quarter", "quarters", "fourth",
    "fourths", "fifth", "fifths", "sixth", "sixths", "tenth", "tenths", "twice", "double", "triple", "square", "cube",
    "root", "percent", "product"};
static const char *MONEY[] = {"cent", "pennie", "penny", "nickel", "dime", "quarter", "dollar"};
static const char *PHYSICAL[] = {"second", "sec", "minute", "min", "hour", "hr", "day", "week", "month", "year",
    "inche", "inch", "foot", "feet", "yard", "mile", "mm", "cm", "meter", "metre", "km", "kilometer", "ounce", "oz",
    "pound", "lb", "gram", "kg", "ton", "tonne", "cup", "pint", "quart", "gallon", "liter", "litre", "ml", "teaspoon",
    "tablespoon"};

/* One open-addressing table: word -> the sets it is in (a bit each). */
enum { W_NOT_UNIT = 1, W_CONNECTIVE = 2, W_LABEL = 4, W_FRACTION = 8, W_MONEY = 16, W_PHYSICAL = 32 };
#define TABLE 1024
static struct { const char *word; int sets; } table[TABLE];

static unsigned hash(const char *w) { unsigned h = 2166136261u; while (*w) h = (h ^ (unsigned char)*w++) * 16777619u; return h; }
static int sets_of(const char *w) {
    if (w == NULL) return 0;
    for (unsigned k = hash(w) & (TABLE - 1);; k = (k + 1) & (TABLE - 1)) {
        if (table[k].word == NULL) return 0;
        if (strcmp(table[k].word, w) == 0) return table[k].sets;
    }
}
static void add_words(const char **words, size_t n, int set) {
    for (size_t i = 0; i < n; i++) {
        unsigned k = hash(words[i]) & (TABLE - 1);
        while (table[k].word != NULL && strcmp(table[k].word, words[i]) != 0) k = (k + 1) & (TABLE - 1);
        table[k].word = words[i];
        table[k].sets |= set;
    }
}
#define ADD(a, set) add_words(a, sizeof(a) / sizeof(a[0]), set)
static int in_measures(const char *w) { return (sets_of(w) & (W_MONEY | W_PHYSICAL)) != 0; }

/* ---------------------------------------------------------------- exact rationals in 128 bits */

typedef struct { i128 n, d; } Rat; /* d > 0, gcd(n, d) == 1 */

typedef struct {
    jmp_buf bail; /* longjmp here: the Python path decides this trace */
} Bail;
static void bail(Bail *b) { longjmp(b->bail, 1); }

#define LIMIT (((i128)1) << 125) /* headroom: sums and negations of values below it cannot overflow */
static i128 chk(Bail *b, i128 v) { if (v >= LIMIT || v <= -LIMIT) bail(b); return v; }
static i128 mul(Bail *b, i128 x, i128 y) { i128 r; if (__builtin_mul_overflow(x, y, &r)) bail(b); return chk(b, r); }
static i128 gcd(i128 a, i128 b) {
    if (a < 0) a = -a;
    if (b < 0) b = -b;
    while (b && (a >> 63 || b >> 63)) { i128 t = a % b; a = b; b = t; }
    unsigned long long x = (unsigned long long)a, y = (unsigned long long)b; /* the common case: 64 bits */
    while (y) { unsigned long long t = x % y; x = y; y = t; }
    return (i128)x;
}
static Rat rat(Bail *b, i128 n, i128 d) {
    if (d == 1) { Rat r = {chk(b, n), 1}; return r; }
    if (d < 0) { n = -n; d = -d; }
    i128 g = gcd(n, d);
    if (g > 1) { n /= g; d /= g; }
    Rat r = {chk(b, n), chk(b, d)};
    return r;
}
static Rat R(i128 n) { Rat r = {n, 1}; return r; }
static Rat radd(Bail *b, Rat x, Rat y) {
    if (x.d == 1 && y.d == 1) { Rat r = {chk(b, x.n + y.n), 1}; return r; }
    return rat(b, chk(b, mul(b, x.n, y.d) + mul(b, y.n, x.d)), mul(b, x.d, y.d)); }
static Rat rneg(Rat x) { x.n = -x.n; return x; }
static Rat rsub(Bail *b, Rat x, Rat y) { return radd(b, x, rneg(y)); }
static Rat rmul(Bail *b, Rat x, Rat y) {
    if (x.d == 1 && y.d == 1) { Rat r = {mul(b, x.n, y.n), 1}; return r; }
    i128 g1 = gcd(x.n, y.d), g2 = gcd(y.n, x.d);
    if (g1 == 0) g1 = 1;
    if (g2 == 0) g2 = 1;
    return rat(b, mul(b, x.n / g1, y.n / g2), mul(b, x.d / g2, y.d / g1));
}
static Rat rdiv(Bail *b, Rat x, Rat y) { Rat inv = {y.d, y.n}; if (inv.d < 0) { inv.n = -inv.n; inv.d = -inv.d; } return rmul(b, x, inv); }
static int rcmp(Bail *b, Rat x, Rat y) { i128 l = mul(b, x.n, y.d), r = mul(b, y.n, x.d); return (l > r) - (l < r); }
static int req(Rat x, Rat y) { return x.n == y.n && x.d == y.d; }
static Rat rabs(Rat x) { if (x.n < 0) x.n = -x.n; return x; }
static int rzero(Rat x) { return x.n == 0; }
static Rat rmax(Bail *b, Rat x, Rat y) { return rcmp(b, x, y) >= 0 ? x : y; }
static Rat pow10r(Bail *b, int k) { i128 v = 1; while (k-- > 0) v = mul(b, v, 10); return R(v); }
static int bit_length(i128 v) { if (v < 0) v = -v; int n = 0; while (v) { n++; v >>= 1; } return n; }

/* ---------------------------------------------------------------- tokens */

enum { K_REL, K_WORD, K_BLOCK, K_NUM, K_OTHER, K_OP, K_FRAC, K_LP, K_RP, K_CMD, K_JUNK };
/* `sym`: the token's text when it is one character; these codes for the longer texts tests compare. */
enum { SYM_NONE = -1, SYM_STARSTAR = -2, SYM_TIMES = -3, SYM_CDOT = -4, SYM_DIV = -5, APPROX = 0x2248 };

/* sup: digits written as superscripts; flags: a word's sets, filled on first use (word_flags) */
typedef struct { int kind; idx start, end; int sym; int sup; int flags; } Tok;

typedef struct { Rat value, ulp; int zeros; int pct, fancy; const char *unit; } Lit;
enum { N_LIT, N_NEG, N_PAREN, N_ADD, N_SUB, N_MUL, N_DIV, N_POW };
typedef struct { int kind; int a, b; Lit lit; } Node;

struct Reading;
typedef struct {
    Bail b;
    const ch_t *s; idx n, lo, hi; /* the string a segment is read from (text or prose), its length, the segment */
    Tok *toks; int nt, cap_t;
    Node *nodes; int nn, cap_n;
    char *arena; size_t used, cap_a; /* unit names of the claim being parsed */
    ch_t *textbuf; int cap_text;      /* the trace */
    ch_t *prose; int cap_prose;       /* with notes blanked and "&=" opened: what lines are read from */
    char *bprose; int cap_bprose;     /* an ASCII trace's prose as bytes: memchr finds its lines and relations */
    Lit *lits; char *lit_done; int cap_lits, cap_done; /* literal() of each token, computed once */
    int i, first_side, depth;
    idx *spans; int nspans, cap_s;
    int *sides, *rels; int nsides, cap_sides, cap_rels; /* the claim: side nodes, relation token indexes */
    struct Reading *readings; int cap_readings;
    char *used_rel; int cap_used;
} Ctx;

static void *grow(Ctx *c, void *p, int *cap, int need, size_t size) {
    if (need <= *cap) return p;
    int nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    void *q = PyMem_Realloc(p, (size_t)nc * size);
    if (q == NULL) bail(&c->b);
    *cap = nc;
    return q;
}

static inline void push_tok(Ctx *c, int kind, idx start, idx end, int sym, int sup) {
    /* tokenize sized the array: at most 2 tokens a character (a superscript "²": "^" and its digits) */
    Tok t = {kind, start, end, sym, sup, 0};
    c->toks[c->nt++] = t;
}

static int sym_of(const ch_t *s, idx a, idx b) { return b - a == 1 ? (int)s[a] : SYM_NONE; }
static int starts(const ch_t *s, idx p, idx hi, const char *lit) {
    for (; *lit; lit++, p++) if (p >= hi || s[p] != (ch_t)(unsigned char)*lit) return 0;
    return 1;
}
static idx digits_end(const ch_t *s, idx p, idx hi) { while (p < hi && is_dec(s[p])) p++; return p; }
static idx spaces_end(const ch_t *s, idx p, idx hi) { while (p < hi && is_space(s[p])) p++; return p; }
/* \b at p: lookbehind sees the whole string, lookahead stops at hi (finditer's endpos) */
static int boundary(const ch_t *s, idx p, idx hi) { return (p > 0 && is_word(s[p - 1])) != (p < hi && is_word(s[p])); }

/* rel: ~=|=~|==|=|≈|≃|~|\\approx(?![A-Za-z])|approx(?:imately)?\b\.?  ; *approx: not "=" or "==" */
static idx m_rel(const ch_t *s, idx p, idx hi, int *approx) {
    ch_t c = s[p], d = p + 1 < hi ? s[p + 1] : 0;
    *approx = 1;
    if (c == '~') return d == '=' ? p + 2 : p + 1;
    if (c == '=') { if (d == '~') return p + 2; *approx = 0; return d == '=' ? p + 2 : p + 1; }
    if (c == 0x2248 || c == 0x2243) return p + 1;
    if (c == '\\' && starts(s, p + 1, hi, "approx") && !(p + 7 < hi && is_ascii_letter(s[p + 7]))) return p + 7;
    if (c == 'a' && starts(s, p, hi, "approx")) {
        idx e = -1;
        if (starts(s, p + 6, hi, "imately") && boundary(s, p + 13, hi)) e = p + 13;
        else if (boundary(s, p + 6, hi)) e = p + 6;
        if (e >= 0) return e < hi && s[e] == '.' ? e + 1 : e;
    }
    return -1;
}

/* block: \d{4}-\d\d?-\d\d?|\d\d?/\d\d?/\d{4}|\d\d?:\d\d|\d+(?:st|nd|rd|th)\b|0\d+ */
static idx m_block(const ch_t *s, idx p, idx hi) {
    idx r = digits_end(s, p, hi), run = r - p;
    if (run == 4 && r < hi && s[r] == '-') {
        idx q = r + 1, r1 = digits_end(s, q, hi);
        if ((r1 - q == 1 || r1 - q == 2) && r1 < hi && s[r1] == '-' && r1 + 1 < hi && is_dec(s[r1 + 1]))
            return r1 + 2 < hi && is_dec(s[r1 + 2]) ? r1 + 3 : r1 + 2;
    }
    if ((run == 1 || run == 2) && r < hi && s[r] == '/') {
        idx q = r + 1, r1 = digits_end(s, q, hi);
        if ((r1 - q == 1 || r1 - q == 2) && r1 < hi && s[r1] == '/' && digits_end(s, r1 + 1, hi) - (r1 + 1) >= 4)
            return r1 + 5;
    }
    if ((run == 1 || run == 2) && r < hi && s[r] == ':' && digits_end(s, r + 1, hi) - (r + 1) >= 2) return r + 3;
    if (r + 1 < hi) {
        ch_t a = s[r], b = s[r + 1];
        if (((a == 's' && b == 't') || (a == 'n' && b == 'd') || (a == 'r' && b == 'd') || (a == 't' && b == 'h'))
            && boundary(s, r + 2, hi))
            return r + 2;
    }
    if (s[p] == '0' && run >= 2) return r;
    return -1;
}

/* mixed: (?:[$€£¥]\s*)?\d+\s+(?:and\s+)?(?:[$€£¥]\s*)?(?:\([1-9]\d*[/]\d+\)|[1-9]\d*[/]\d+)(?![\d/.]) */
static idx m_mixed(const ch_t *s, idx p, idx hi) {
    idx q = p;
    if (is_cur(s[q])) q = spaces_end(s, q + 1, hi);
    idx r = digits_end(s, q, hi);
    if (r == q) return -1;
    q = spaces_end(s, r, hi);
    if (q == r) return -1;
    if (starts(s, q, hi, "and") && q + 3 < hi && is_space(s[q + 3])) {
        idx a = spaces_end(s, q + 3, hi);
        if (a < hi && (is_cur(s[a]) || s[a] == '(' || (s[a] >= '1' && s[a] <= '9'))) q = a; /* else "and" fails */
    }
    if (q < hi && is_cur(s[q])) q = spaces_end(s, q + 1, hi);
    int paren = q < hi && s[q] == '(';
    q += paren;
    if (!(q < hi && s[q] >= '1' && s[q] <= '9')) return -1;
    q = digits_end(s, q, hi);
    if (!(q < hi && s[q] == '/')) return -1;
    r = digits_end(s, q + 1, hi);
    if (r == q + 1) return -1;
    if (paren) { if (!(r < hi && s[r] == ')')) return -1; r++; }
    if (r < hi && (is_dec(s[r]) || s[r] == '/' || s[r] == '.')) return -1;
    return r;
}

/* thousands groups after a run of 1-3 digits: (?:SEP\d{3})+(?!\d), the most groups that satisfy (?!\d) */
static idx m_groups(const ch_t *s, idx r, idx hi, int comma) {
    idx best = -1, g = r;
    for (;;) {
        idx q;
        if (comma && g < hi && s[g] == ',') q = g + 1;
        else if (comma && starts(s, g, hi, "{,}")) q = g + 3;
        else if (!comma && g < hi && s[g] == ' ') q = g + 1;
        else break;
        if (digits_end(s, q, hi) - q < 3) break;
        g = q + 3;
        if (!(g < hi && is_dec(s[g]))) best = g;
    }
    return best;
}

/* num: (?:(?:[$€£¥]|\\\$)\s*)?(?:\d{1,3}(?:(?:,|\{,\})\d{3})+(?!\d)|\d{1,3}(?:[ ]\d{3})+(?!\d)|\d+|(?<![\w.])(?=\.\d))
 *      (?:\.\d+(?:\.\.\.|…)?)?(?:\s*(?:\\?%|percent\b))? */
static idx m_num(const ch_t *s, idx p, idx hi) {
    idx q = p;
    if (is_cur(s[p])) q = spaces_end(s, p + 1, hi);
    else if (s[p] == '\\' && p + 1 < hi && s[p + 1] == '$') q = spaces_end(s, p + 2, hi);
    idx e;
    if (q < hi && is_dec(s[q])) {
        idx r = digits_end(s, q, hi);
        e = r;
        if (r - q <= 3) {
            idx g = m_groups(s, r, hi, 1);
            if (g < 0) g = m_groups(s, r, hi, 0);
            if (g >= 0) e = g;
        }
    } else if (q < hi && s[q] == '.' && q + 1 < hi && is_dec(s[q + 1]) && !(q > 0 && (is_word(s[q - 1]) || s[q - 1] == '.'))) {
        e = q;
    } else {
        return -1;
    }
    if (e < hi && s[e] == '.' && e + 1 < hi && is_dec(s[e + 1])) {
        e = digits_end(s, e + 1, hi);
        if (starts(s, e, hi, "...")) e += 3;
        else if (e < hi && s[e] == 0x2026) e += 1;
    }
    idx t = spaces_end(s, e, hi);
    if (t < hi && s[t] == '%') e = t + 1;
    else if (starts(s, t, hi, "\\%")) e = t + 2;
    else if (starts(s, t, hi, "percent") && boundary(s, t + 7, hi)) e = t + 7;
    return e;
}

static int word_is(const ch_t *s, const Tok *t, const char *w) {
    idx n = t->end - t->start;
    if ((size_t)n != strlen(w)) return 0;
    for (idx k = 0; k < n; k++) if (s[t->start + k] != (ch_t)(unsigned char)w[k]) return 0;
    return 1;
}
static int lower_is(const ch_t *s, const Tok *t, const char *w) { /* t.text.lower() == w */
    idx n = t->end - t->start;
    if ((size_t)n != strlen(w)) return 0;
    for (idx k = 0; k < n; k++) { ch_t ch = s[t->start + k]; if ((ch >= 'A' && ch <= 'Z' ? ch + 32 : ch) != (ch_t)(unsigned char)w[k]) return 0; }
    return 1;
}
static int is_digits_tok(const ch_t *s, const Tok *t) { /* str.isdigit() of its text */
    if (t->end == t->start) return 0;
    for (idx k = t->start; k < t->end; k++) if (!is_digit(s[k])) return 0;
    return 1;
}
/* int(a) < int(b) for two runs of ASCII digits */
static int digits_less(const ch_t *s, idx a0, idx a1, idx b0, idx b1) {
    while (a0 < a1 - 1 && s[a0] == '0') a0++;
    while (b0 < b1 - 1 && s[b0] == '0') b0++;
    if (a1 - a0 != b1 - b0) return a1 - a0 < b1 - b0;
    for (; a0 < a1; a0++, b0++) if (s[a0] != s[b0]) return s[a0] < s[b0];
    return 0;
}

/* _tokenize */
static void tokenize(Ctx *c) {
    const ch_t *s = c->s;
    idx hi = c->hi, p = c->lo;
    if (hi - p > INT_MAX / 4) bail(&c->b);
    c->toks = grow(c, c->toks, &c->cap_t, (int)(2 * (hi - p) + 4), sizeof(Tok));
    c->nt = 0;
    for (;;) {
        p = spaces_end(s, p, hi);
        if (p >= hi) break;
        ch_t ch = s[p];
        idx e = -1, r = p;
        int kind = -1, approx = 0, sym = SYM_NONE;
        if ((ch == '=' || ch == '~' || ch == 'a' || ch == '\\' || ch == 0x2248 || ch == 0x2243)
            && (e = m_rel(s, p, hi, &approx)) >= 0) {
            kind = K_REL;
        } else if (is_ascii_letter(ch)) { /* a word, the commonest token: no rule below touches it */
            e = p + 1;
            while (e < hi && is_ascii_letter(s[e])) e++;
            if (e + 1 < hi && s[e] == '\'' && s[e + 1] >= 'a' && s[e + 1] <= 'z') { e++; while (e < hi && s[e] >= 'a' && s[e] <= 'z') e++; }
            push_tok(c, K_WORD, p, e, e - p == 1 ? (int)ch : SYM_NONE, 0);
            p = e;
            continue;
        } else if (ch < 128 && alone[ch]) { /* a bracket, punctuation, + - / ^ */
            push_tok(c, alone[ch] - 1, p, p + 1, (int)ch, 0);
            p++;
            continue;
        } else if (is_dec(ch) && (((r = digits_end(s, p, hi)) - p >= 2 && ch == '0')
                                  || (r < hi && (s[r] == '-' || s[r] == '/' || s[r] == ':' || s[r] == 's' || s[r] == 'n'
                                                 || s[r] == 'r' || s[r] == 't')))
                   && (e = m_block(s, p, hi)) >= 0) { /* what may follow a block's first digits */
            kind = K_BLOCK;
        } else if (((is_dec(ch) && r < hi && is_space(s[r])) || is_cur(ch)) && (e = m_mixed(s, p, hi)) >= 0) {
            /* _MIXED: \D*(\d+)\D+(\d+)/(\d+); proper when top < bottom */
            idx a = p;
            while (!is_dec(s[a])) a++;
            a = digits_end(s, a, e);
            while (!is_dec(s[a])) a++;
            idx top0 = a, top1 = digits_end(s, a, e), bot0 = top1 + 1, bot1 = digits_end(s, bot0, e);
            kind = digits_less(s, top0, top1, bot0, bot1) ? K_NUM : K_BLOCK;
        } else if ((e = m_num(s, p, hi)) >= 0) kind = K_NUM;
        else if (ch == '\\' && p + 1 < hi && (s[p + 1] == ']' || s[p + 1] == '[' || s[p + 1] == '(' || s[p + 1] == ')')) {
            kind = K_OTHER; e = p + 2;
        } else if (ch == '\\' && (starts(s, p + 1, hi, "begin{") || starts(s, p + 1, hi, "end{"))) {
            idx q = p + (s[p + 1] == 'b' ? 7 : 5);
            while (q < hi && (is_ascii_letter(s[q]) || s[q] == '*')) q++;
            if (q < hi && s[q] == '}') { kind = K_OTHER; e = q + 1; }
        }
        if (kind < 0 && (is_sup(ch) || (ch == 0x207B && p + 1 < hi && is_sup(s[p + 1])))) {
            /* sup: ⁻?[⁰¹²³⁴⁵⁶⁷⁸⁹]+ becomes "^", a "-" when negative, and the digits */
            idx start = p;
            e = p + (ch == 0x207B);
            while (e < hi && is_sup(s[e])) e++;
            push_tok(c, K_OP, start, start, '^', 0);
            if (ch == 0x207B) { push_tok(c, K_OP, start, start + 1, '-', 0); start++; }
            push_tok(c, K_NUM, start, e, e - start == 1 ? '0' + sup_digit(s[start]) : SYM_NONE, 1);
            p = e;
            continue;
        }
        /* op: \*\*|[-+*^/×÷·⋅−]|(?<=\s)–(?=\s)|\\(?:times|cdot|div)(?![A-Za-z]); + - / ^ went through `alone` */
        if (kind < 0) {
            if (starts(s, p, hi, "**")) { kind = K_OP; e = p + 2; sym = SYM_STARSTAR; }
            else if (ch == '*' || ch == 0xD7 || ch == 0xF7 || ch == 0xB7 || ch == 0x22C5 || ch == 0x2212
                     || (ch == 0x2013 && p > 0 && is_space(s[p - 1]) && p + 1 < hi && is_space(s[p + 1]))) {
                kind = K_OP; e = p + 1;
            } else if (ch == '\\') {
                static const char *names[] = {"times", "cdot", "div"};
                for (int k = 0; k < 3 && kind < 0; k++) {
                    idx q = p + 1 + (idx)strlen(names[k]);
                    if (starts(s, p + 1, hi, names[k]) && !(q < hi && is_ascii_letter(s[q]))) {
                        kind = K_OP; e = q; sym = SYM_TIMES - k;
                    }
                }
            }
        }
        if (kind < 0 && ch == '\\') { /* frac: \\[dt]?frac(?![A-Za-z]); lp: \\left\(; rp: \\right\); cmd: \\[A-Za-z]+ */
            idx q = p + 1 + (p + 1 < hi && (s[p + 1] == 'd' || s[p + 1] == 't') && starts(s, p + 2, hi, "frac"));
            if (starts(s, q, hi, "frac") && !(q + 4 < hi && is_ascii_letter(s[q + 4]))) { kind = K_FRAC; e = q + 4; }
            else if (starts(s, p + 1, hi, "left(")) { kind = K_LP; e = p + 6; }
            else if (starts(s, p + 1, hi, "right)")) { kind = K_RP; e = p + 7; }
            else if (p + 1 < hi && is_ascii_letter(s[p + 1])) {
                e = p + 1;
                while (e < hi && is_ascii_letter(s[e])) e++;
                kind = K_CMD;
            }
        }
        if (kind < 0) { /* junk: \S (the ASCII brackets, lp and rp, went through `alone`) */
            e = p + 1;
            kind = K_JUNK;
        }
        idx start = p;
        if (sym == SYM_NONE) sym = sym_of(s, start, e);
        p = e;
        Tok *prev = c->nt ? &c->toks[c->nt - 1] : NULL;
        if (kind == K_OP && sym == SYM_STARSTAR
            && ((start == c->lo || is_space(s[start - 1])) != (e == hi || is_space(s[e])))) {
            continue; /* markdown bold */
        } else if (kind == K_REL && e - start == 1 && ch == '~' && !(prev && prev->kind == K_REL)) {
            kind = K_JUNK; /* a lone "~" */
        } else if (kind == K_REL) {
            if (prev && prev->kind == K_REL) {
                approx = approx || prev->sym == APPROX;
                start = prev->start;
                c->nt--;
            }
            sym = approx ? APPROX : '=';
        } else if (kind == K_NUM && c->nt > 1 && prev->sym == '-' && prev->kind == K_OP) {
            Tok *two = &c->toks[c->nt - 2];
            if (two->kind == K_NUM && (c->nt == 2 || c->toks[c->nt - 3].kind == K_WORD) && two->end == prev->start
                && prev->end == start && is_digits_tok(s, &(Tok){K_NUM, start, e, 0, 0, 0}) && is_digits_tok(s, two)
                && !two->sup && digits_less(s, two->start, two->end, start, e)) {
                start = two->start; /* "Weeks 1-2": a range */
                kind = K_BLOCK;
                c->nt -= 2;
                sym = SYM_NONE;
            }
        }
        push_tok(c, kind, start, e, sym, 0);
    }
}

/* ---------------------------------------------------------------- numbers */

static const char *arena_str(Ctx *c, const char *a, size_t na, const char *b, size_t nb) {
    if (c->used + na + nb + 1 > c->cap_a) bail(&c->b);
    char *out = c->arena + c->used;
    memcpy(out, a, na);
    memcpy(out + na, b, nb);
    out[na + nb] = 0;
    c->used += na + nb + 1;
    return out;
}

/* a word's text, lower case, "s" cut from its end when `cut`; NULL when too long for a set */
static const char *lower(const ch_t *s, const Tok *t, char *buf, size_t cap, int cut) {
    idx n = t->end - t->start;
    if ((size_t)n >= cap) return NULL;
    for (idx k = 0; k < n; k++) { ch_t ch = s[t->start + k]; buf[k] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch); }
    if (cut) while (n > 0 && buf[n - 1] == 's') n--;
    buf[n] = 0;
    return buf;
}

enum { F_DONE = 1, F_NOT_UNIT = 2, F_CONNECTIVE = 4, F_LABEL = 8, F_FRACTION = 16, F_AT = 32, F_OF = 64 };

static int word_flags(const Ctx *c, Tok *t) { /* which word sets t.text.lower() is in: looked up once a token */
    if (t->flags) return t->flags;
    char buf[64];
    const char *w = lower(c->s, t, buf, sizeof buf, 0);
    int sets = sets_of(w);
    t->flags = F_DONE | (sets & W_NOT_UNIT ? F_NOT_UNIT : 0) | (sets & W_CONNECTIVE ? F_CONNECTIVE : 0)
               | (sets & W_LABEL ? F_LABEL : 0) | (sets & W_FRACTION ? F_FRACTION : 0)
               | (w && strcmp(w, "at") == 0 ? F_AT : 0) | (w && strcmp(w, "of") == 0 ? F_OF : 0);
    return t->flags;
}

static int is_unit(const Ctx *c, Tok *t) {
    return t->kind == K_WORD && t->end - t->start > 1 && !(word_flags(c, t) & F_NOT_UNIT);
}

/* _literal over a num token's text, _NUM: (cur)?\s*(int: \d(?:[\d, ]|\{,\})*|)(?:\.(dec\d+))?(?:\.\.\.|…)?\s*(pct)? */
static Lit read_literal(Ctx *c, const Tok *t);
static Lit literal(Ctx *c, const Tok *t) {
    int k = (int)(t - c->toks);
    if (!c->lit_done[k]) { c->lits[k] = read_literal(c, t); c->lit_done[k] = 1; }
    return c->lits[k];
}

static Lit read_literal(Ctx *c, const Tok *t) {
    const ch_t *s = c->s;
    idx p = t->start, e = t->end;
    Lit lit = {R(0), R(0), 0, 0, 0, NULL};
    if (!t->sup && e - p <= 18 && is_dec(s[p])) { /* the common case: plain digits */
        i128 v = 0;
        int zeros = 0, nonzero = 0;
        idx k = p;
        for (; k < e && is_dec(s[k]); k++) {
            v = v * 10 + (s[k] - '0');
            if (s[k] == '0') zeros++; else { zeros = 0; nonzero = 1; }
        }
        if (k == e) {
            lit.value = R(v);
            lit.zeros = nonzero ? zeros : 0;
            return lit;
        }
    }
    if (t->sup) {
        i128 v = 0;
        if (e - p > 36) bail(&c->b);
        for (; p < e; p++) v = v * 10 + sup_digit(s[p]);
        lit.value = R(v);
        return lit;
    }
    if (is_cur(s[p]) || (s[p] == '\\' && p + 1 < e && s[p + 1] == '$')) lit.unit = "$";
    int slash = 0;
    for (idx k = p; k < e; k++) slash |= s[k] == '/';
    if (slash) { /* a mixed number */
        i128 part[3] = {0, 0, 0};
        idx k = p;
        for (int g = 0; g < 3; g++) {
            while (!is_dec(s[k])) k++;
            idx r = digits_end(s, k, e);
            if (r - k > 36) bail(&c->b);
            for (; k < r; k++) part[g] = part[g] * 10 + (s[k] - '0');
        }
        lit.value = rat(&c->b, chk(&c->b, mul(&c->b, part[0], part[2]) + part[1]), part[2]);
        lit.fancy = 1;
        return lit;
    }
    if (lit.unit) p = (s[p] == '\\' ? p + 2 : p + 1);
    p = spaces_end(s, p, e);
    i128 v = 0;
    int nd = 0, ndec = 0, comma = 0, zeros = 0, nonzero = 0;
    idx int0 = p, last_nonspace = p;
    if (p < e && is_dec(s[p])) {
        while (p < e) {
            if (is_dec(s[p])) {
                if (++nd > 36) bail(&c->b);
                v = v * 10 + (s[p] - '0');
                if (s[p] == '0') zeros++; else { zeros = 0; nonzero = 1; }
                last_nonspace = ++p;
            } else if (s[p] == ',') { comma = 1; last_nonspace = ++p; }
            else if (s[p] == ' ') p++;
            else if (starts(s, p, e, "{,}")) { comma = 1; p += 3; last_nonspace = p; }
            else break;
        }
    }
    int inner_space = 0;
    for (idx k = int0; k < last_nonspace; k++) inner_space |= s[k] == ' ';
    if (p < e && s[p] == '.' && p + 1 < e && is_dec(s[p + 1])) {
        for (p++; p < e && is_dec(s[p]); p++) {
            if (++nd > 36) bail(&c->b);
            v = v * 10 + (s[p] - '0');
            ndec++;
        }
    }
    if (starts(s, p, e, "...")) p += 3;
    else if (p < e && s[p] == 0x2026) p++;
    p = spaces_end(s, p, e);
    lit.pct = p < e && (s[p] == '%' || s[p] == '\\' || s[p] == 'p');
    Rat scale = pow10r(&c->b, ndec);
    lit.value = rat(&c->b, v, scale.n);
    lit.ulp = ndec ? rat(&c->b, 1, scale.n) : R(0);
    lit.zeros = !ndec && nonzero ? zeros : 0;
    if (lit.pct) {
        lit.value = rat(&c->b, lit.value.n, mul(&c->b, lit.value.d, 100));
        lit.ulp = rat(&c->b, lit.ulp.n, mul(&c->b, lit.ulp.d, 100));
    }
    lit.fancy = lit.pct || ndec || comma || inner_space;
    return lit;
}

/* ---------------------------------------------------------------- parser (_Parser) */

enum { ERR_NOPARSE = -1, ERR_SYMBOLIC = -2 };
enum { OP_NONE, OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_POW, OP_OF, OP_IMPLICIT };
static const int PREC[] = {0, 1, 1, 2, 2, 3, 2, 2};

static int new_node(Ctx *c, int kind, int a, int b) {
    c->nodes = grow(c, c->nodes, &c->cap_n, c->nn + 1, sizeof(Node));
    Node *n = &c->nodes[c->nn];
    n->kind = kind; n->a = a; n->b = b;
    return c->nn++;
}
static int lit_node(Ctx *c, Lit lit) { int k = new_node(c, N_LIT, -1, -1); c->nodes[k].lit = lit; return k; }
static Tok *tok(Ctx *c, int k) { return k < c->nt ? &c->toks[k] : NULL; }
static int is_minus(const Tok *t) { return t && t->kind == K_OP && (t->sym == '-' || t->sym == 0x2212); }
static int is_pow_text(const Tok *t) { return t && t->kind == K_OP && (t->sym == '^' || t->sym == SYM_STARSTAR); }

static int bin_op(const Tok *t) {
    switch (t->sym) {
    case '+': return OP_ADD;
    case '-': case 0x2212: case 0x2013: return OP_SUB;
    case '*': case 0xD7: case 0xB7: case 0x22C5: case SYM_TIMES: case SYM_CDOT: return OP_MUL;
    case '/': case 0xF7: case SYM_DIV: return OP_DIV;
    default: return OP_POW; /* ^ ** */
    }
}

static int op_word(Ctx *c, int j) { /* _op_word: "x" or "of" before an operand */
    Tok *t = tok(c, j), *n = tok(c, j + 1);
    return n && t->kind == K_WORD && (t->sym == 'x' || t->sym == 'X' || word_is(c->s, t, "of"))
           && (n->kind == K_NUM || n->kind == K_LP || n->kind == K_FRAC);
}

static int op_of(Ctx *c, const Tok *t, int left) {
    if (t->kind == K_OP) return bin_op(t);
    if (t->kind == K_WORD && op_word(c, c->i)) {
        if (t->sym == 'x' || t->sym == 'X') return OP_MUL;
        Node *l = &c->nodes[left];
        int part = l->kind == N_LIT ? l->lit.pct
                   : l->kind == N_DIV && c->nodes[l->a].kind == N_LIT && c->nodes[l->b].kind == N_LIT;
        return c->first_side && part ? OP_OF : OP_NONE;
    }
    return t->kind == K_LP && t->start == c->toks[c->i - 1].end ? OP_IMPLICIT : OP_NONE;
}

static int rate(Ctx *c, int j) { /* _rate: 1 for "/", 2 for "per", 0 for none */
    Tok *sep = tok(c, j), *w = tok(c, j + 1);
    if (w == NULL || !is_unit(c, w)) return 0;
    if (sep->sym == '/' && sep->kind == K_OP && sep->start == c->toks[j - 1].end && w->start == sep->end) return 1;
    return sep->kind == K_WORD && sep->end - sep->start == 3 && lower_is(c->s, sep, "per") ? 2 : 0;
}

static int expr(Ctx *c, int floor);

/* number: the literal at token t and its unit; ERR_SYMBOLIC for "2x", "2 dozen = 24", "12 cm^2" */
static int number(Ctx *c, const Tok *t, Lit *out) {
    Lit lit = literal(c, t);
    int start = c->i, j = start, n = c->nt;
    while (j < n && j - start < 2 && is_unit(c, &c->toks[j])) j++;
    int r = rate(c, j);
    j += r ? 2 : 0;
    if (j == start && (j >= n || c->toks[j].kind != K_WORD)) { *out = lit; return 0; }
    Tok *nxt = tok(c, j), *after = tok(c, j + 1);
    int opw = op_word(c, j);
    if (nxt && nxt->kind == K_WORD && !opw
        && (nxt->start == c->toks[j - 1].end || (after && (after->kind == K_OP || after->kind == K_REL))))
        return ERR_SYMBOLIC;
    if (j > start && nxt && ((nxt->kind == K_OP && (nxt->sym == '/' || nxt->sym == '^' || nxt->sym == SYM_STARSTAR)))
        && nxt->start == c->toks[j - 1].end)
        return ERR_SYMBOLIC;
    char named[64] = "", suffix[66] = "";
    if (j > start + (r ? 2 : 0) && lower(c->s, &c->toks[start], named, sizeof named, 1) == NULL) bail(&c->b);
    const char *unit = (lit.unit && strcmp(lit.unit, "$") == 0 && (sets_of(named) & W_PHYSICAL)) ? named
                       : lit.unit ? lit.unit : named;
    if (j > start && (r == 1 || (nxt && (nxt->kind == K_OP || nxt->kind == K_REL || opw)))) c->i = j;
    if (r) {
        suffix[0] = '/';
        if (lower(c->s, &c->toks[j - 1], suffix + 1, sizeof suffix - 1, 1) == NULL) bail(&c->b);
    }
    size_t nu = strlen(unit), ns = strlen(suffix);
    lit.unit = nu + ns ? arena_str(c, unit, nu, suffix, ns) : NULL;
    *out = lit;
    return 0;
}

static int atom(Ctx *c) {
    Tok *t = tok(c, c->i);
    if (t == NULL) return ERR_NOPARSE;
    if (++c->depth > 100) bail(&c->b);
    c->i++;
    int res = ERR_NOPARSE;
    if (t->kind == K_NUM) {
        Lit lit;
        if (number(c, t, &lit) < 0) { c->depth--; return ERR_SYMBOLIC; }
        res = lit_node(c, lit);
        int i = c->i;
        Tok *ts = c->toks;
        if (i + 1 < c->nt && ts[i].kind == K_OP && ts[i].sym == '/' && ts[i - 1].kind == K_NUM && ts[i + 1].kind == K_NUM
            && ts[i].start == ts[i - 1].end && ts[i + 1].start == ts[i].end && !(i > 1 && is_pow_text(&ts[i - 2]))
            && !(i + 2 < c->nt && is_pow_text(&ts[i + 2]))) {
            c->i += 2; /* "28 / 1/5": a tight 1/5 is one number */
            Lit den;
            if (number(c, &ts[i + 1], &den) < 0) { c->depth--; return ERR_SYMBOLIC; }
            res = new_node(c, N_DIV, res, lit_node(c, den));
        }
    } else if (t->kind == K_OP && t->sym == SYM_STARSTAR) {
        res = atom(c);
    } else if (t->kind == K_LP) {
        int inner = expr(c, 1);
        if (inner < 0) res = inner;
        else if (c->i >= c->nt || c->toks[c->i].kind != K_RP) res = ERR_NOPARSE;
        else { c->i++; res = new_node(c, N_PAREN, inner, -1); }
    } else if (t->kind == K_FRAC && c->i < c->nt && c->toks[c->i].kind == K_LP) {
        int top = atom(c);
        if (top < 0) res = top;
        else if (c->i < c->nt && c->toks[c->i].kind == K_LP) {
            int bottom = atom(c);
            res = bottom < 0 ? bottom : new_node(c, N_DIV, top, bottom);
        }
    }
    c->depth--;
    return res;
}

static int unary(Ctx *c) {
    Tok *t = tok(c, c->i);
    if (!is_minus(t)) return atom(c);
    c->i++;
    int inner = expr(c, PREC[OP_POW]);
    if (inner < 0) return inner;
    if (c->nodes[inner].kind == N_LIT) {
        Lit lit = c->nodes[inner].lit;
        lit.value = rneg(lit.value);
        return lit_node(c, lit);
    }
    return new_node(c, N_NEG, inner, -1);
}

static int expr(Ctx *c, int floor) {
    if (++c->depth > 100) bail(&c->b);
    int node = unary(c);
    if (node < 0) { c->depth--; return node; }
    Tok *t;
    int op;
    while ((t = tok(c, c->i)) != NULL && (op = op_of(c, t, node)) != OP_NONE && PREC[op] >= floor) {
        int save = c->i;
        c->i += op != OP_IMPLICIT;
        int rhs = expr(c, PREC[op] + (op != OP_POW));
        if (rhs == ERR_SYMBOLIC) { c->depth--; return rhs; }
        if (rhs == ERR_NOPARSE) { c->i = save; break; }
        static const int kinds[] = {0, N_ADD, N_SUB, N_MUL, N_DIV, N_POW, N_MUL, N_MUL};
        node = new_node(c, kinds[op], node, rhs);
    }
    c->depth--;
    return node;
}


/* claim: the claim starting at token j; the index after it, -1 when there is none, or ERR_SYMBOLIC */
static int claim(Ctx *c, int j) {
    c->i = j; c->first_side = 1; c->nn = 0; c->used = 0; c->depth = 0; c->nsides = 0;
    int side = expr(c, 1);
    if (side == ERR_SYMBOLIC) return side;
    if (side == ERR_NOPARSE) { c->i = j; return -1; }
    c->first_side = 0; /* "= 1/3 of $150" describes, it does not multiply */
    for (;;) {
        c->sides = grow(c, c->sides, &c->cap_sides, c->nsides + 1, sizeof(int));
        c->sides[c->nsides++] = side;
        Tok *t = tok(c, c->i);
        if (t == NULL || t->kind != K_REL) break;
        int save = c->i;
        c->i++;
        side = expr(c, 1);
        if (side == ERR_SYMBOLIC) return side;
        if (side == ERR_NOPARSE) { c->i = save; break; }
        c->rels = grow(c, c->rels, &c->cap_rels, c->nsides, sizeof(int));
        c->rels[c->nsides - 1] = save;
    }
    return c->nsides > 1 ? c->i : -1;
}

/* ---------------------------------------------------------------- where a claim starts and ends */

static int is_glue(ch_t ch) {
    return ch == '(' || ch == '[' || ch == '{' || ch == '$' || ch == '"' || ch == '\'' || ch == 0x201C || ch == 0x2018
           || ch == '=' || ch == '*' || ch == '~' || ch == '`';
}
static int is_punct_sym(int sym) { return sym == '.' || sym == ',' || sym == ';' || sym == ':' || sym == '?'; }

static int left_ok(Ctx *c, int j, int e) { /* _left_ok */
    const ch_t *s = c->s;
    Tok *toks = c->toks;
    idx start = toks[j].start, lo = c->lo;
    if (start > lo && !is_glue(s[start - 1]) && !is_space(s[start - 1]))
        return s[start - 1] == ':' && start - 2 >= lo && is_alpha(s[start - 2]);
    Tok *prev = j ? &toks[j - 1] : NULL, *before = j > 1 ? &toks[j - 2] : NULL;
    if (prev == NULL) return 1;
    if (prev->kind == K_OP) return before == NULL || before->kind == K_LP || before->kind == K_REL || is_punct_sym(before->sym);
    if (prev->kind == K_WORD) {
        int f = word_flags(c, prev);
        if ((f & (F_CONNECTIVE | F_LABEL)) || (before && (before->kind == K_OP || (before->kind == K_NUM && is_unit(c, prev)))))
            return 0;
        if (f & F_AT) return !(j + 1 < c->nt && toks[j + 1].kind == K_REL);
        if (!(f & F_OF) || before == NULL) return 1;
        return !(before->kind == K_NUM || (before->kind == K_WORD && (word_flags(c, before) & F_FRACTION)));
    }
    if (prev->kind == K_LP) return e < c->nt && toks[e].kind == K_RP;
    if (prev->sym == '.' && before && before->kind == K_OP) return 0;
    if (prev->sym == ',' && before && before->kind == K_NUM && before->end == prev->start)
        return !(before->end - before->start <= 3 && toks[j].end - toks[j].start == 3);
    if (prev->sym == ')' && before && before->end == prev->start
        && ((before->kind == K_NUM && is_digits_tok(s, before)) || (before->kind == K_WORD && before->end - before->start == 1))) {
        Tok *opener = j > 2 ? &toks[j - 3] : NULL; /* a list marker: "1) 3 + 4 = 7", "Case 2) ...", "(b) ..." */
        if (opener && opener->sym == '(') return j == 3 || toks[j - 4].kind == K_WORD;
        for (int k = 0; k < j - 2; k++) if (toks[k].kind == K_LP) return 0;
        return 1;
    }
    return !(prev->kind == K_NUM || prev->kind == K_BLOCK || prev->kind == K_RP || prev->kind == K_CMD);
}

static int right_ok(Ctx *c, int e) { /* _right_ok */
    const ch_t *s = c->s;
    Tok *toks = c->toks;
    idx end = toks[e - 1].end;
    if (end < c->hi && !is_space(s[end])) {
        ch_t ch = s[end];
        int has2 = end + 1 < c->n;
        ch_t c2 = has2 ? s[end + 1] : 0;
        if (is_alnum(ch) || ch == '/' || ch == '^' || ch == '_' || ch == '-' || ch == 0x2212 || ch == 0x2013 || ch == '('
            || ((ch == '.' || ch == ':') && has2 && (is_digit(c2) || c2 == '\\'))
            || (ch == ',' && has2 && !is_space(c2))
            || (ch == '!' && has2 && (is_alnum(c2) || c2 == '=' || c2 == '(')))
            return 0;
    }
    if (e < c->nt) {
        Tok *t = &toks[e];
        if (t->kind == K_NUM || t->kind == K_BLOCK || t->kind == K_FRAC || (t->kind == K_LP && t->start == end)
            || (e + 1 < c->nt && is_unit(c, t) && toks[e + 1].kind == K_NUM))
            return 0;
        if (e + 1 < c->nt && t->kind == K_OP) {
            int k = toks[e + 1].kind;
            if (k == K_NUM || k == K_LP || k == K_WORD || k == K_FRAC || k == K_CMD || k == K_BLOCK) return 0;
        }
    }
    return 1;
}

/* ---------------------------------------------------------------- verdicts */

enum { UNEVALUABLE = 1 };

static int unit_eq(const char *a, const char *b) { return a == b || (a && b && strcmp(a, b) == 0); }
static int measure_or_dollar(const char *u) { return u && (strcmp(u, "$") == 0 || in_measures(u)); }

static Rat pow_rat(Bail *b, Rat a, i128 e) { /* a ** e, e >= 0 */
    Rat r = R(1);
    while (e) {
        if (e & 1) r = rmul(b, r, a);
        e >>= 1;
        if (e) a = rmul(b, a, a);
    }
    return r;
}

static int power(Ctx *c, Rat a, Rat b, Rat *out) { /* _power; fractional powers go to the Python path */
    if (b.d != 1) bail(&c->b);
    i128 e = b.n, ae = e < 0 ? -e : e;
    int bits = bit_length(a.n) > bit_length(a.d) ? bit_length(a.n) : bit_length(a.d);
    if ((a.n == 0 && e < 0) || (ae > 1 && (ae > 20000 || bits * ae > 20000))) return UNEVALUABLE;
    Rat r = pow_rat(&c->b, a, ae);
    if (e < 0) r = rdiv(&c->b, R(1), r);
    *out = r;
    return 0;
}

static int value(Ctx *c, int k, int label, Rat *out, int depth) { /* _value */
    if (depth > 100) bail(&c->b);
    Node *nd = &c->nodes[k];
    if (nd->kind == N_LIT) {
        *out = label && nd->lit.pct ? rmul(&c->b, nd->lit.value, R(100)) : nd->lit.value;
        return 0;
    }
    if (nd->kind == N_PAREN || nd->kind == N_NEG) {
        if (nd->kind == N_NEG && c->nodes[nd->a].kind == N_POW) return UNEVALUABLE; /* "-2^2" */
        if (value(c, nd->a, label, out, depth + 1)) return UNEVALUABLE;
        if (nd->kind == N_NEG) *out = rneg(*out);
        return 0;
    }
    Rat a, b;
    if (value(c, nd->a, label, &a, depth + 1) || value(c, nd->b, label, &b, depth + 1)) return UNEVALUABLE;
    nd = &c->nodes[k];
    switch (nd->kind) {
    case N_ADD: case N_SUB: {
        Node *l = &c->nodes[nd->a], *r = &c->nodes[nd->b];
        if (l->kind == N_LIT && r->kind == N_LIT
            && (l->lit.pct != r->lit.pct || (!unit_eq(l->lit.unit, r->lit.unit) && measure_or_dollar(l->lit.unit)
                                             && measure_or_dollar(r->lit.unit))))
            return UNEVALUABLE; /* a percent added to a number, or different measures added */
        *out = nd->kind == N_ADD ? radd(&c->b, a, b) : rsub(&c->b, a, b);
        return 0;
    }
    case N_MUL: *out = rmul(&c->b, a, b); return 0;
    case N_DIV:
        if (rzero(b)) return UNEVALUABLE;
        *out = rdiv(&c->b, a, b);
        return 0;
    default: return power(c, a, b, out);
    }
}

typedef int (*LitTest)(const Lit *, const void *);
static int walk(Ctx *c, int k, LitTest test, const void *arg, int depth) { /* _walk */
    if (depth > 100) bail(&c->b);
    Node *nd = &c->nodes[k];
    if (nd->kind == N_LIT) return test(&nd->lit, arg);
    return walk(c, nd->a, test, arg, depth + 1) || (nd->b >= 0 && walk(c, nd->b, test, arg, depth + 1));
}
static int t_pct(const Lit *l, const void *arg) { (void)arg; return l->pct; }
static int t_money(const Lit *l, const void *arg) { (void)arg; return (sets_of(l->unit) & W_MONEY) != 0; }
static int t_unit(const Lit *l, const void *arg) { (void)arg; return l->unit != NULL; }
static int t_rate_of(const Lit *l, const void *arg) { /* bare.unit in x.unit.split("/") */
    const char *u = l->unit, *want = arg;
    if (u == NULL) return 0;
    size_t n = strlen(want);
    for (;;) {
        const char *slash = strchr(u, '/');
        size_t len = slash ? (size_t)(slash - u) : strlen(u);
        if (len == n && strncmp(u, want, n) == 0) return 1;
        if (!slash) return 0;
        u = slash + 1;
    }
}

static int converts(Ctx *c, int side_a, const Lit *a, int side_b, const Lit *b) { /* _converts */
    if (a && b) return !unit_eq(a->unit, b->unit);
    const Lit *bare = a ? a : b;
    int other = a ? side_b : side_a;
    if (bare == NULL || bare->unit == NULL) return 0;
    if (strcmp(bare->unit, "$") == 0) return walk(c, other, t_money, NULL, 0);
    return in_measures(bare->unit) && walk(c, other, t_unit, NULL, 0) && !walk(c, other, t_rate_of, bare->unit, 0);
}

static const Lit *lit_of(Ctx *c, int side) { Node *n = &c->nodes[c->sides[side]]; return n->kind == N_LIT ? &n->lit : NULL; }

/* _skips: 1 when link i is not checked, 0 when it is, -1 when unevaluable */
static int skips(Ctx *c, int i, Rat before, int remainder) {
    int first = c->sides[i + 1];
    while (c->nodes[first].kind != N_LIT && c->nodes[first].kind != N_NEG) first = c->nodes[first].a;
    if (i + 2 < c->nsides && c->nodes[c->sides[i + 1]].kind != N_LIT && c->nodes[first].kind == N_LIT
        && req(c->nodes[first].lit.value, before))
        return 1; /* a running total restarts */
    Node *side = &c->nodes[c->sides[i]];
    const Lit *result = lit_of(c, i + 1);
    if (!remainder || side->kind != N_DIV || result == NULL || result->value.d != 1) return 0;
    Rat a, b;
    if (value(c, side->a, 0, &a, 0) || value(c, side->b, 0, &b, 0)) return -1;
    if (!(a.d == 1 && b.d == 1 && b.n > 0)) return 0;
    i128 q = a.n / b.n;
    if (a.n % b.n != 0 && a.n < 0) q -= 1; /* floor */
    return q == result->value.n;
}

static int holds(Ctx *c, Rat x, const Lit *a, Rat y, const Lit *b, int approx) { /* _holds */
    Bail *bl = &c->b;
    if (req(x, y)) return 1;
    Rat gap = rabs(rsub(bl, x, y));
    if (approx) {
        Rat most = rdiv(bl, rmax(bl, rabs(x), rabs(y)), R(100));
        const Lit *lits[2] = {a, b};
        for (int k = 0; k < 2; k++) {
            if (!lits[k]) continue;
            Rat u = !rzero(lits[k]->ulp) ? lits[k]->ulp : rdiv(bl, pow10r(bl, lits[k]->zeros), R(lits[k]->pct ? 100 : 1));
            most = rmax(bl, most, rdiv(bl, u, R(2)));
        }
        return rcmp(bl, gap, most) <= 0;
    }
    Rat values[2] = {x, y}, shown[2] = {y, x};
    const Lit *lits[2] = {b, a};
    for (int k = 0; k < 2; k++) {
        const Lit *l = lits[k];
        if (l == NULL || rzero(l->ulp)) continue;
        int sv = (values[k].n > 0) - (values[k].n < 0), ss = (shown[k].n > 0) - (shown[k].n < 0);
        if (rcmp(bl, gap, rdiv(bl, l->ulp, R(2))) <= 0
            || (rcmp(bl, gap, l->ulp) < 0 && rcmp(bl, rabs(shown[k]), rabs(values[k])) < 0 && sv * ss >= 0))
            return 1;
    }
    return 0;
}

typedef struct Reading { int n; Rat v[3]; Lit lit[3]; int has[3]; } Reading;
enum { V_NONE = -1, V_FALSE = 0, V_TRUE = 1 };

static int judge(Ctx *c, int note, int remainder, int bang) { /* _judge */
    int k = c->nsides;
    if (!note) {
        int plain = 1;
        for (int i = 0; i < k && plain; i++) { const Lit *l = lit_of(c, i); plain = l && !l->fancy; }
        if (plain) return V_NONE; /* in prose "4 = 4" restates a number */
    }
    c->readings = grow(c, c->readings, &c->cap_readings, k, sizeof(Reading));
    Reading *rd = c->readings;
    for (int i = 0; i < k; i++) {
        const Lit *l = lit_of(c, i);
        rd[i].n = 1;
        if (value(c, c->sides[i], 0, &rd[i].v[0], 0)) return V_NONE;
        rd[i].has[0] = l != NULL;
        if (l) rd[i].lit[0] = *l;
        if (walk(c, c->sides[i], t_pct, NULL, 0)) {
            if (value(c, c->sides[i], 1, &rd[i].v[1], 0)) return V_NONE;
            rd[i].has[1] = l != NULL;
            if (l) {
                rd[i].lit[1] = *l;
                rd[i].lit[1].value = rmul(&c->b, l->value, R(100));
                rd[i].lit[1].ulp = rmul(&c->b, l->ulp, R(100));
                rd[i].lit[1].pct = 0;
            }
            rd[i].n = 2;
        }
    }
    const Lit *last = lit_of(c, k - 1);
    if (bang && last == NULL) return V_NONE; /* a factorial of an expression, or an exclamation */
    /* 34! > 2^125 > any value here: such a reading can hold for no side, so it is left out */
    if (bang && last->value.d == 1 && last->value.n >= 0 && last->value.n <= 33 && !last->pct) {
        i128 f = 1;
        for (i128 m = 2; m <= last->value.n; m++) f *= m;
        Reading *r = &rd[k - 1];
        r->v[r->n] = R(f);
        r->has[r->n++] = 0;
    }
    int checked = 0;
    for (int i = 0; i + 1 < k; i++) {
        const Lit *a = lit_of(c, i), *b = lit_of(c, i + 1);
        if (i == 0 && a && !b && (!a->fancy || (a->unit && strcmp(a->unit, "$") != 0))) continue; /* a label */
        if (converts(c, c->sides[i], a, c->sides[i + 1], b)) continue;
        int sk = skips(c, i, rd[i].v[0], remainder);
        if (sk < 0) return V_NONE;
        if (sk) continue;
        checked = 1;
        int approx = c->toks[c->rels[i]].sym == APPROX, ok = 0;
        for (int x = 0; x < rd[i].n && !ok; x++)
            for (int y = 0; y < rd[i + 1].n && !ok; y++)
                ok = holds(c, rd[i].v[x], rd[i].has[x] ? &rd[i].lit[x] : NULL, rd[i + 1].v[y],
                           rd[i + 1].has[y] ? &rd[i + 1].lit[y] : NULL, approx);
        if (!ok) return V_FALSE;
    }
    return checked ? V_TRUE : V_NONE;
}

/* ---------------------------------------------------------------- segments and the entry point */

static int contains(const ch_t *s, idx a, idx b, const char *w) {
    size_t n = strlen(w);
    for (idx p = a; p + (idx)n <= b; p++) if (starts(s, p, b, w)) return 1;
    return 0;
}

static void add_span(Ctx *c, idx a, idx b) {
    c->spans = grow(c, c->spans, &c->cap_s, 2 * c->nspans + 2, sizeof(idx));
    c->spans[2 * c->nspans] = a;
    c->spans[2 * c->nspans + 1] = b;
    c->nspans++;
}

static void check_segment(Ctx *c, const ch_t *s, idx lo, idx hi, int note, long *checked, long *skipped) {
    c->s = s; c->lo = lo; c->hi = hi;
    tokenize(c);
    int nt = c->nt;
    c->lits = grow(c, c->lits, &c->cap_lits, nt + 1, sizeof(Lit));
    c->lit_done = grow(c, c->lit_done, &c->cap_done, nt + 1, 1);
    memset(c->lit_done, 0, (size_t)nt + 1);
    c->used_rel = grow(c, c->used_rel, &c->cap_used, nt + 1, 1);
    memset(c->used_rel, 0, (size_t)nt + 1);
    int j = 0;
    while (j < nt) {
        Tok *t = &c->toks[j], *nxt = j + 1 < nt ? &c->toks[j + 1] : NULL;
        if (!(t->kind == K_NUM || t->kind == K_LP || t->kind == K_FRAC)
            && !(is_minus(t) && nxt && nxt->kind == K_NUM && nxt->start == t->end)) {
            j++;
            continue;
        }
        int e = claim(c, j);
        if (e == ERR_SYMBOLIC) { j++; continue; }
        if (e < 0) { j = c->i > j + 1 ? c->i : j + 1; continue; }
        int verdict = V_NONE;
        if (!left_ok(c, j, e)) {
            if (c->nsides > 2) { j = c->rels[0] + 1; continue; } /* the first side is a tail; the rest still claims */
        } else if (right_ok(c, e)) {
            idx end = c->toks[e - 1].end;
            verdict = judge(c, note, contains(s, end, hi, "remain"), end < c->n && s[end] == '!');
        }
        if (verdict != V_NONE) {
            (*checked)++;
            for (int r = 0; r + 1 < c->nsides; r++) c->used_rel[c->rels[r]] = 1;
            if (verdict == V_FALSE) add_span(c, c->toks[j].start, c->toks[e - 1].end);
        }
        j = e;
    }
    for (int i = 0; i < nt; i++) {
        Tok *t = &c->toks[i];
        if (t->kind != K_REL || c->used_rel[i]) continue;
        if ((i && (c->toks[i - 1].kind == K_NUM || c->toks[i - 1].kind == K_RP))
            || (i + 1 < nt && (c->toks[i + 1].kind == K_NUM || c->toks[i + 1].kind == K_LP || c->toks[i + 1].kind == K_FRAC)))
            (*skipped)++;
    }
}

/* Buffers outlive a call (allocation was a tenth of the time); one caller at a time: the GIL is
 * held throughout and nothing here calls back into Python. */
static Ctx pool;

static void release(Ctx *c) {
    if (c->cap_t > (1 << 16) || c->cap_prose > (1 << 20) || c->cap_text > (1 << 20)) { /* a huge trace: give its memory back */
        PyMem_Free(c->toks); PyMem_Free(c->nodes); PyMem_Free(c->spans); PyMem_Free(c->sides); PyMem_Free(c->rels);
        PyMem_Free(c->readings); PyMem_Free(c->used_rel); PyMem_Free(c->prose); PyMem_Free(c->arena);
        PyMem_Free(c->textbuf); PyMem_Free(c->lits); PyMem_Free(c->lit_done); PyMem_Free(c->bprose);
        memset(c, 0, sizeof *c);
    }
}

enum { DONE = 0, HANDED_BACK = 1, FAILED = -1 }; /* FAILED: a Python error is set */

/* Check one trace: its counts added to *checked and *skipped, its false claims' spans in c->spans. */
static int run(Ctx *c, PyObject *arg, long long *checked, long long *skipped) {
    idx n = PyUnicode_GET_LENGTH(arg);
    c->n = n;
    c->nspans = 0;
    if (setjmp(c->b.bail)) return PyErr_Occurred() ? FAILED : HANDED_BACK;
    if (c->arena == NULL) {
        c->cap_a = 1 << 16;
        if ((c->arena = PyMem_Malloc(c->cap_a)) == NULL) bail(&c->b);
    }
    if (n + 1 > INT_MAX / 8) bail(&c->b);
    c->textbuf = grow(c, c->textbuf, &c->cap_text, (int)n + 1, sizeof(ch_t));
    if (PyUnicode_AsUCS4(arg, c->textbuf, n + 1, 1) == NULL) return FAILED;
    const ch_t *text = c->textbuf, *prose = text;
    const char *bytes = PyUnicode_IS_ASCII(arg) ? PyUnicode_DATA(arg) : NULL, *bprose = bytes;
    int digits = 0, amp = 0, lt = 0;
    if (bytes) { /* most traces: memchr runs through the bytes */
        amp = memchr(bytes, '&', (size_t)n) != NULL;
        lt = memchr(bytes, '<', (size_t)n) != NULL;
        for (idx k = 0; k < n && !digits; k++) digits = is_dec((ch_t)bytes[k]);
    } else {
        for (idx k = 0; k < n; k++) {
            ch_t ch = text[k];
            digits |= is_dec(ch);
            amp |= ch == '&';
            lt |= ch == '<';
            if (ch >= 128 && Py_UNICODE_ISDECIMAL(ch)) bail(&c->b); /* \d and int() read these; this port does not */
        }
    }
    long checked_here = 0, skipped_here = 0; /* added to the totals only if no bail comes */
    if (!digits) goto done;
    if (lt || amp) { /* notes blanked and "&=" opened up in a copy: the prose */
        c->prose = grow(c, c->prose, &c->cap_prose, (int)n + 1, sizeof(ch_t));
        memcpy(c->prose, text, (size_t)n * sizeof(ch_t));
        prose = c->prose;
        if (bytes) {
            c->bprose = grow(c, c->bprose, &c->cap_bprose, (int)n + 1, 1);
            memcpy(c->bprose, bytes, (size_t)n);
            bprose = c->bprose;
        }
    }
    for (idx p = 0; lt && p + 1 < n; p++) { /* <<([^<>\n]*)>> */
        if (bytes) {
            const char *at = memchr(bytes + p, '<', (size_t)(n - p));
            if (at == NULL) break;
            p = at - bytes;
            if (p + 1 >= n) break;
        }
        if (text[p] != '<' || text[p + 1] != '<') continue;
        idx q = p + 2;
        while (q < n && text[q] != '<' && text[q] != '>' && text[q] != '\n') q++;
        if (q + 1 < n && text[q] == '>' && text[q + 1] == '>') {
            check_segment(c, text, p + 2, q, 1, &checked_here, &skipped_here);
            for (idx k = p; k < q + 2; k++) c->prose[k] = ' ';
            if (bytes) memset(c->bprose + p, ' ', (size_t)(q + 2 - p));
            p = q + 1;
        }
    }
    for (idx k = 0; amp && k < n; k++) { /* &(?=\s*(?:=|≈|\\approx(?![A-Za-z]))): LaTeX alignment */
        if (prose[k] != '&') continue;
        idx q = spaces_end(prose, k + 1, n);
        if (q < n && (prose[q] == '=' || prose[q] == 0x2248
                      || (starts(prose, q, n, "\\approx") && !(q + 7 < n && is_ascii_letter(prose[q + 7]))))) {
            c->prose[k] = ' ';
            if (bytes) c->bprose[k] = ' ';
        }
    }
    for (idx a = 0; a < n;) { /* each line ([^\n]+) with a relation ([=≈≃~]|approx) */
        idx b = a;
        int relation = 0;
        if (bytes) {
            const char *nl = memchr(bprose + a, '\n', (size_t)(n - a)), *line = bprose + a;
            b = nl ? nl - bprose : n;
            size_t len = (size_t)(b - a);
            relation = memchr(line, '=', len) || memchr(line, '~', len) || memmem(line, len, "approx", 6);
        } else {
            for (; b < n && prose[b] != '\n'; b++) {
                ch_t ch = prose[b];
                relation |= ch == '=' || ch == 0x2248 || ch == 0x2243 || ch == '~' || (ch == 'a' && starts(prose, b, n, "approx"));
            }
        }
        if (relation) check_segment(c, prose, a, b, 0, &checked_here, &skipped_here);
        a = b + 1;
    }
done:
    *checked += checked_here;
    *skipped += skipped_here;
    return DONE;
}

/* One str through run: DONE with *claims its false claims as written, HANDED_BACK, or FAILED. */
static int check_one(PyObject *text, long long *checked, long long *skipped, PyObject **claims) {
    int status = run(&pool, text, checked, skipped);
    if (status == DONE && (*claims = PyList_New(pool.nspans)) != NULL) {
        for (int k = 0; k < pool.nspans; k++) {
            PyObject *claim = PyUnicode_Substring(text, pool.spans[2 * k], pool.spans[2 * k + 1]);
            if (claim == NULL) { Py_CLEAR(*claims); break; }
            PyList_SET_ITEM(*claims, k, claim);
        }
        if (*claims == NULL) status = FAILED;
    } else if (status == DONE) {
        status = FAILED;
    }
    release(&pool);
    return status;
}

static PyObject *py_check(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "check() reads a str, got %s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    long long checked = 0, skipped = 0;
    PyObject *claims;
    int status = check_one(arg, &checked, &skipped, &claims);
    if (status == FAILED) return NULL;
    if (status == HANDED_BACK) Py_RETURN_NONE;
    return Py_BuildValue("(LLN)", checked, skipped, claims);
}

/* check over a list: (checked, skipped, [false claims of each text, or None: use the Python path]) */
static PyObject *py_check_many(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyList_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "check_many() reads a list, got %s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(arg);
    PyObject *falses = PyList_New(n);
    if (falses == NULL) return NULL;
    long long checked = 0, skipped = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *text = PyList_GET_ITEM(arg, k), *found;
        if (text == Py_None || (PyUnicode_Check(text) && PyUnicode_GET_LENGTH(text) == 0)) {
            found = PyList_New(0);
        } else if (!PyUnicode_Check(text)) {
            PyErr_Format(PyExc_TypeError, "check_many() reads str or None, item %zd is %s", k, Py_TYPE(text)->tp_name);
            Py_DECREF(falses);
            return NULL;
        } else {
            int status = check_one(text, &checked, &skipped, &found);
            if (status == HANDED_BACK) found = Py_NewRef(Py_None);
            else if (status == FAILED) found = NULL;
        }
        if (found == NULL) { Py_DECREF(falses); return NULL; }
        PyList_SET_ITEM(falses, k, found);
    }
    return Py_BuildValue("(LLN)", checked, skipped, falses);
}

static PyMethodDef methods[] = {
    {"check_many", py_check_many, METH_O,
     "check over a list of str (None as empty): (checked, skipped, [false claims, or None: use the Python path])."},
    {"check", py_check, METH_O,
     "(checked, skipped, [false claim, ...]) of a trace as steps.py's Python path reads it, or None: use that path."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_stepscan", "steps.py's step checker in C.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__stepscan(void) {
    for (const char *k = "([{"; *k; k++) alone[(int)*k] = K_LP + 1;
    for (const char *k = ")]}"; *k; k++) alone[(int)*k] = K_RP + 1;
    for (const char *k = "+-/^"; *k; k++) alone[(int)*k] = K_OP + 1;
    for (const char *k = ",;:?!\"'`|#@&%<>_"; *k; k++) alone[(int)*k] = K_JUNK + 1;
    for (int ch = 0; ch < 128; ch++)
        ascii[ch] = (((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) ? A_LETTER | A_ALNUM : 0)
                    | (ch >= '0' && ch <= '9' ? A_ALNUM : 0);
    ADD(NOT_UNITS, W_NOT_UNIT); ADD(CONNECTIVES, W_CONNECTIVE); ADD(LABELS, W_LABEL);
    ADD(FRACTION_WORDS, W_FRACTION); ADD(MONEY, W_MONEY); ADD(PHYSICAL, W_PHYSICAL);
    return PyModule_Create(&module);
}
