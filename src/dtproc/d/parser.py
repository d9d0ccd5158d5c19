"""Recursive-descent parser for the D subset, following dtrace's grammar.

Precedence and associativity are C's, plus D's ``^^`` (logical xor) between
``&&`` and ``||``. A clause is ``spec[, spec...] [/predicate/] [{ statements }]``;
the last statement of a body may omit its ``;``, and ``if``/``else`` are
accepted as in current dtrace. Outer-level declarations (``self int x;``,
``this long long v;``) give variables a type before first use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from dtproc.d import ast, dtypes
from dtproc.d.errors import DCompileError, Pos
from dtproc.d.lexer import Lexer, Mode, T, Token

ASSIGN_OPS = frozenset("= += -= *= /= %= &= |= ^= <<= >>=".split())

# Binary operator precedence levels, loosest first (below the conditional).
_BINARY_LEVELS: tuple[tuple[str, ...], ...] = (
    ("||",),
    ("^^",),
    ("&&",),
    ("|",),
    ("^",),
    ("&",),
    ("==", "!="),
    ("<", ">", "<=", ">="),
    ("<<", ">>"),
    ("+", "-"),
    ("*", "/", "%"),
)

_BRACKETS = {"(": "(", "[": "[", ")": "(", "]": "["}
_TYPE_KEYWORDS = frozenset("char short int long signed unsigned void string const volatile".split())
_SPEC_TOKENS = (T.PSPEC, T.INT)  # a description, or a probe id
_MACRO_IN_SPEC = re.compile(r"\$\$?([0-9]+|[A-Za-z_][0-9A-Za-z_]*)")


def parse(
    source: str, macros: Mapping[str, str | int], *, pspec: bool = False, from_file: bool = False
) -> ast.ProgramAst:
    """Parse a whole D program.

    A script (*from_file*) is parsed as dtrace parses a file: each probe
    description needs a predicate or actions (elsewhere ``BEGIN`` alone is a
    clause with the default action, as in ``dtrace -n BEGIN``). With *pspec*
    (dtrace's ``DTRACE_C_PSPEC``, for ``-n``-style arguments) a word outside
    clauses is a probe description even where it names a type.
    """
    return Parser(source, macros, pspec=pspec, from_file=from_file).program()


class Parser:
    def __init__(
        self,
        source: str,
        macros: Mapping[str, str | int],
        *,
        pspec: bool = False,
        from_file: bool = False,
    ) -> None:
        self.src = source
        self.from_file = from_file
        self.lx = Lexer(source, macros, pspec=pspec)
        self.off = 0
        self._cache: tuple[int, Mode, Token] | None = None
        self.depth = {"(": 0, "[": 0}

    # -- token plumbing ----------------------------------------------------------

    def peek(self, mode: Mode = Mode.EXPR) -> Token:
        c = self._cache
        if c is not None and c[0] == self.off and c[1] is mode:
            return c[2]
        tok = self.lx.token(self.off, mode)
        self._cache = (self.off, mode, tok)
        return tok

    def take(self, mode: Mode = Mode.EXPR) -> Token:
        tok = self.peek(mode)
        if tok.kind is T.OP and tok.text in _BRACKETS:
            self._bracket(tok)
        self.off = tok.end
        return tok

    def _bracket(self, tok: Token) -> None:
        """Count ( and [ as dtrace's lexer does, to name unbalanced ones."""
        if tok.text in self.depth:
            self.depth[tok.text] += 1
            return
        opener = _BRACKETS[tok.text]
        if self.depth[opener] == 0:
            raise self.error(f"extra {tok.text} in input stream", tok.pos)
        self.depth[opener] -= 1

    def at(self, text: str, mode: Mode = Mode.EXPR) -> bool:
        tok = self.peek(mode)
        return tok.kind in (T.OP, T.KEYWORD, T.EPRED) and tok.text == text

    def expect(self, text: str, mode: Mode = Mode.EXPR) -> Token:
        if not self.at(text, mode):
            raise self.syntax_error(self.peek(mode))
        return self.take(mode)

    def syntax_error(self, tok: Token) -> DCompileError:
        if tok.kind is T.OP and tok.text in (")", "]") and not self.depth[_BRACKETS[tok.text]]:
            return self.error(f"extra {tok.text} in input stream", tok.pos)
        if tok.kind is T.EPRED:
            for opener, closer in (("(", ")"), ("[", "]")):
                if self.depth[opener]:
                    return self.error(f"closing {closer} expected in predicate before /", tok.pos)
        near = "end of input" if tok.kind is T.EOF else f'"{tok.text}"'
        return DCompileError(f"syntax error near {near}", tok.pos, self.src)

    def error(self, msg: str, pos: Pos) -> DCompileError:
        return DCompileError(msg, pos, self.src)

    # -- program -----------------------------------------------------------------

    def program(self) -> ast.ProgramAst:
        items: list[ast.Clause | ast.Declaration] = []
        while True:
            tok = self.peek(Mode.OUTER)
            if tok.kind is T.EOF:
                break
            if tok.kind in (T.KEYWORD, T.TNAME):
                items.append(self.declaration())
            elif tok.kind in _SPEC_TOKENS:
                items.append(self.clause())
            else:
                raise self.syntax_error(tok)
        pragmas = tuple(
            ast.Pragma(cl.words, cl.pos) for _, cl in sorted(self.lx.control_lines.items())
        )
        return ast.ProgramAst(tuple(items), pragmas)

    def declaration(self) -> ast.Declaration:
        start = self.peek(Mode.OUTER).pos
        scope = "global"
        if self.at("self", Mode.OUTER) or self.at("this", Mode.OUTER):
            scope = self.take(Mode.OUTER).text
        dtype = self.type_name()
        names: list[tuple[str, Pos]] = []
        while True:
            tok = self.take()
            if tok.kind is not T.IDENT:
                raise self.syntax_error(tok)
            if self.at("["):
                raise self.error(
                    "associative array declarations are not supported: assign to "
                    f"{tok.text}[...] instead",
                    tok.pos,
                )
            names.append((tok.text, tok.pos))
            if not self.at(","):
                break
            self.take()
        self.expect(";")
        return ast.Declaration(scope, dtype, tuple(names), start)

    def clause(self) -> ast.Clause:
        specs = [self.probe_spec()]
        while self.at(",", Mode.OUTER):
            self.take(Mode.OUTER)
            tok = self.peek(Mode.OUTER)
            if tok.kind not in _SPEC_TOKENS:
                raise self.syntax_error(tok)
            specs.append(self.probe_spec())
        if self.from_file and not (self.at("/", Mode.OUTER) or self.at("{", Mode.OUTER)):
            raise self.error(
                "expected predicate and/or actions following probe description", specs[0].pos
            )
        predicate: ast.Expr | None = None
        if self.at("/", Mode.OUTER):
            self.take(Mode.OUTER)
            predicate = self.expression()
            tok = self.peek()
            if tok.kind is not T.EPRED:
                raise self.syntax_error(tok)
            self.take()
            if not self.at("{"):
                raise self.error(
                    "expected actions { } following probe description and predicate",
                    predicate.pos,
                )
        body: tuple[ast.Stmt, ...] | None = None
        if self.at("{", Mode.OUTER):
            self.take(Mode.OUTER)
            body = self.statement_list()
            self.expect("}")
        return ast.Clause(tuple(specs), predicate, body, specs[0].pos)

    def probe_spec(self) -> ast.ProbeSpec:
        tok = self.take(Mode.OUTER)
        if tok.kind is T.INT:
            assert isinstance(tok.value, int)
            return ast.ProbeSpec(tok.text, tok.pos, tok.value)
        return ast.ProbeSpec(self.expand_spec_macros(tok), tok.pos)

    def expand_spec_macros(self, tok: Token) -> str:
        """Replace ``$target``, ``$1``... inside a probe description (``$$`` is ``$`` here)."""

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in self.lx.macros:
                raise self.error(
                    f'invalid probe description "{tok.text}": '
                    "Undefined macro variable in probe description",
                    tok.pos,
                )
            return self.lx.macros[name]

        return _MACRO_IN_SPEC.sub(sub, tok.text)

    # -- statements --------------------------------------------------------------

    def statement_list(self) -> tuple[ast.Stmt, ...]:
        stmts: list[ast.Stmt] = []
        while not self.at("}"):
            tok = self.peek()
            if tok.kind is T.EOF:
                raise self.syntax_error(tok)
            if self.at(";"):
                self.take()
                continue
            if self.at("if"):
                stmts.append(self.if_statement())
                continue
            expr = self.expression()
            stmts.append(ast.ExprStmt(expr.pos, expr))
            if not self.at("}"):
                self.expect(";")
        return tuple(stmts)

    def if_statement(self) -> ast.If:
        pos = self.take().pos
        self.expect("(")
        cond = self.expression()
        self.expect(")")
        then = self.statement_or_block()
        other: tuple[ast.Stmt, ...] = ()
        if self.at("else"):
            self.take()
            other = self.statement_or_block()
        return ast.If(pos, cond, then, other)

    def statement_or_block(self) -> tuple[ast.Stmt, ...]:
        if self.at("{"):
            self.take()
            stmts = self.statement_list()
            self.expect("}")
            return stmts
        if self.at(";"):
            self.take()
            return ()
        if self.at("if"):
            return (self.if_statement(),)
        expr = self.expression()
        self.expect(";")
        return (ast.ExprStmt(expr.pos, expr),)

    # -- expressions -------------------------------------------------------------

    def expression(self) -> ast.Expr:
        left = self.assignment()
        while self.at(","):
            self.take()
            right = self.assignment()
            left = ast.Comma(left.pos, left, right)
        return left

    def assignment(self) -> ast.Expr:
        left = self.conditional()
        tok = self.peek()
        if tok.kind is T.OP and tok.text in ASSIGN_OPS:
            self.take()
            value = self.assignment()
            return ast.Assign(tok.pos, tok.text, left, value)
        return left

    def conditional(self) -> ast.Expr:
        cond = self.binary(0)
        if not self.at("?"):
            return cond
        self.take()
        then = self.expression()
        self.expect(":")
        other = self.conditional()
        return ast.Ternary(cond.pos, cond, then, other)

    def binary(self, level: int) -> ast.Expr:
        if level == len(_BINARY_LEVELS):
            return self.cast()
        ops = _BINARY_LEVELS[level]
        left = self.binary(level + 1)
        while True:
            tok = self.peek()
            if tok.kind is not T.OP or tok.text not in ops:
                return left
            self.take()
            right = self.binary(level + 1)
            left = ast.Binary(tok.pos, tok.text, left, right)

    def cast(self) -> ast.Expr:
        if self.at("(") and self.type_follows():
            pos = self.take().pos
            dtype = self.type_name()
            self.expect(")")
            return ast.Cast(pos, dtype, self.cast())
        return self.unary()

    def type_follows(self) -> bool:
        """After ``(``: does a type name start here?"""
        tok = self.lx.token(self.peek().end, Mode.EXPR)
        return tok.kind is T.TNAME or (tok.kind is T.KEYWORD and tok.text in _TYPE_KEYWORDS)

    def unary(self) -> ast.Expr:
        tok = self.peek()
        if tok.kind is T.OP and tok.text in ("++", "--"):
            self.take()
            return ast.Unary(tok.pos, "pre" + tok.text, self.unary())
        if tok.kind is T.OP and tok.text in ("-", "+", "~", "!", "*", "&"):
            self.take()
            return ast.Unary(tok.pos, tok.text, self.cast())
        if tok.kind is T.KEYWORD and tok.text == "sizeof":
            self.take()
            if self.at("(") and self.type_follows():
                self.take()
                dtype = self.type_name()
                self.expect(")")
                return ast.SizeofType(tok.pos, dtype)
            return ast.SizeofExpr(tok.pos, self.unary())
        if tok.kind is T.KEYWORD and tok.text == "stringof":
            self.take()
            return ast.Stringof(tok.pos, self.unary())
        return self.postfix()

    def postfix(self) -> ast.Expr:
        expr = self.primary()
        while True:
            tok = self.peek()
            if tok.kind is not T.OP:
                return expr
            if tok.text == "[":
                self.take()
                keys = self.argument_list("]")
                expr = self.subscript(expr, keys, tok)
            elif tok.text == "(":
                self.take()
                args = self.argument_list(")")
                if not isinstance(expr, ast.Ident):
                    raise self.error("function designator is not of function type", tok.pos)
                expr = ast.Call(expr.pos, expr.name, args)
            elif tok.text in ("->", "."):
                self.take()
                expr = self.member(expr, tok)
            elif tok.text in ("++", "--"):
                self.take()
                expr = ast.Unary(tok.pos, "post" + tok.text, expr)
            else:
                return expr

    def subscript(self, base: ast.Expr, keys: tuple[ast.Expr, ...], tok: Token) -> ast.Expr:
        if isinstance(base, ast.AggRef):
            if base.keys is not None:
                raise self.error(
                    f"improper attempt to reference @{base.name} as a multi-dimensional array",
                    tok.pos,
                )
            return ast.AggRef(base.pos, base.name, keys)
        return ast.Index(base.pos, base, keys)

    def member(self, base: ast.Expr, tok: Token) -> ast.Expr:
        name_tok = self.take()
        if name_tok.kind not in (T.IDENT, T.KEYWORD, T.TNAME):
            raise self.error(f"operator {tok.text} must be followed by an identifier", tok.pos)
        if isinstance(base, ast.Ident) and base.name in ("self", "this") and tok.text == "->":
            return ast.ScopedVar(base.pos, base.name, name_tok.text)
        return ast.Member(tok.pos, tok.text, base, name_tok.text)

    def argument_list(self, close: str) -> tuple[ast.Expr, ...]:
        args: list[ast.Expr] = []
        if self.at(close):
            self.take()
            return ()
        while True:
            args.append(self.assignment())
            if self.at(","):
                self.take()
                continue
            self.expect(close)
            return tuple(args)

    def primary(self) -> ast.Expr:
        tok = self.take()
        if tok.kind is T.INT:
            assert isinstance(tok.value, int) and tok.itype is not None
            return ast.IntLit(tok.pos, tok.value, tok.itype)
        if tok.kind is T.STRING:
            assert isinstance(tok.value, str)
            return ast.StrLit(tok.pos, tok.value)
        if tok.kind is T.IDENT:
            return ast.Ident(tok.pos, tok.text)
        if tok.kind is T.KEYWORD and tok.text in ("self", "this"):
            return ast.Ident(tok.pos, tok.text)
        if tok.kind is T.AGG:
            assert isinstance(tok.value, str)
            return ast.AggRef(tok.pos, tok.value, None)
        if tok.kind is T.OP and tok.text == "(":
            expr = self.expression()
            self.expect(")")
            return expr
        raise self.syntax_error(tok)

    # -- types -------------------------------------------------------------------

    def type_name(self) -> dtypes.DType:
        """``[const] [signed|unsigned] (char|short|int|long [long]|void|string|TNAME) [*...]``."""
        words: list[str] = []
        first = self.peek()
        base: dtypes.DType | None = None
        while True:
            tok = self.peek(Mode.EXPR)
            if tok.kind is T.KEYWORD and tok.text in _TYPE_KEYWORDS:
                self.take()
                if tok.text not in ("const", "volatile"):
                    words.append(tok.text)
            elif tok.kind is T.TNAME and base is None and not words:
                self.take()
                base = dtypes.TYPEDEFS[tok.text]
            else:
                break
        if base is None:
            base = self.base_type(words, first)
        while self.at("*"):
            self.take()
            base = dtypes.pointer_to(base)
        return base

    def base_type(self, words: list[str], first: Token) -> dtypes.DType:
        if words == ["string"]:
            return dtypes.STRING
        if words == ["void"]:
            return dtypes.VOID
        sign = [w for w in words if w in ("signed", "unsigned")]
        rest = [w for w in words if w not in ("signed", "unsigned")]
        if len(sign) > 1 or "string" in rest or "void" in rest:
            raise self.error("invalid type combination", first.pos)
        core = " ".join(rest) or "int"
        if core in ("long int", "short int", "long long int"):
            core = core[: -len(" int")]
        if core not in ("char", "short", "int", "long", "long long"):
            raise self.error("invalid type combination", first.pos)
        if sign == ["unsigned"]:
            return dtypes.BASE_TYPES["unsigned " + core]
        if sign == ["signed"] and core == "char":
            return dtypes.SCHAR
        return dtypes.BASE_TYPES[core]
