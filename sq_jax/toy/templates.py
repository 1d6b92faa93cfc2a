"""The toy word-problem templates: each builds one scenario of a given number of arithmetic steps.

A template computes only through `Build.op`, so the question text, the worked solution and the answer agree, and
marks with `Build.key` the one quantity that the unsolvable variant leaves out.
"""

from __future__ import annotations

import math
import operator
import random
from collections.abc import Callable

from sq_jax.toy.words import (
    GIRLS, BOYS, SHOP, SHARE, MODES, CHORES, BUYS, GOALS, DISHES, INGS, PLACES, ROOMS, SALE, PACK_ITEMS,
    COLLECT, RELATIVES, DAYS, JOBS, VEHICLES, TIMES, PARTS,
)

__all__ = ["BUILDERS", "MAX_STEPS", "TEMPLATES", "Build"]

MAX_STEPS = 10**6  # the step bound of templates that take any number

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}


class Build:
    """Records steps; templates compute only through ``op`` so text, steps and answer agree."""

    def __init__(self, drop: bool) -> None:
        self.drop, self.lines, self.missing, self.result = drop, [], None, 0

    def op(self, a: int, sym: str, b: int, why: str) -> int:
        if sym == "/" and (b <= 0 or a % b):
            raise ArithmeticError(f"inexact division {a} / {b}")
        c = _OPS[sym](a, b)
        if min(a, b, c) < 0:
            raise ArithmeticError(f"negative value in {a} {sym} {b} = {c}")
        self.lines.append(f"{why} {a} {sym} {b} = {c}.")
        self.result = c
        return c

    def key(self, known: str, vague: str, missing: str) -> str:
        """Text of the one quantity that the unsolvable variant leaves out."""
        if self.missing is not None:
            raise RuntimeError("a template may hide only one quantity")
        self.missing = missing
        return vague if self.drop else known


def _people(r: random.Random, k: int = 1) -> list[tuple[str, str, str, str, str]]:
    """k distinct people as (name, he, him, his, He) with matching pronouns."""
    return [(n, "she", "her", "her", "She") if n in GIRLS else (n, "he", "him", "his", "He")
            for n in r.sample(GIRLS + BOYS, k)]


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _bill(total: int) -> int:
    return next((x for x in (10, 20, 50, 100) if x >= total), 100 * (total // 100 + 1))


def _moves(r: random.Random, v: int, n: int, hi: int, mod: int = 1) -> list[tuple[str, int]]:
    """n gains/losses from v that never drop below 1; the last one makes v a multiple of mod."""
    out = []
    for i in range(n):
        sym = "-" if v > 1 and r.random() < 0.45 else "+"
        d = r.randint(1, min(hi, v - 1)) if sym == "-" else r.randint(1, hi)
        if i == n - 1 and mod > 1:
            d = v % mod if sym == "-" else -v % mod
            if d == 0 or (sym == "-" and v - d < mod):
                sym, d = "+", (-v % mod) or mod
        v += d if sym == "+" else -d
        out.append((sym, d))
    return out


def _shopping(r: random.Random, s: int, b: Build) -> str:
    (name, he, _, _, He), = _people(r)
    k = (s + 1) // 2  # k products cost 2k - 1 steps; an even s adds the change
    hide, parts, total = r.randrange(k), [], 0
    for i, item in enumerate(r.sample(SHOP, k)):
        q, p = r.randint(2, 9), r.randint(1, 12)
        qs = b.key(str(q), "some", f"how many {item} {name} buys") if i == hide else str(q)
        parts.append(f"{qs} {item} at ${p} each")
        cost = b.op(q, "*", p, f"The {item} cost")
        total = cost if i == 0 else b.op(total, "+", cost, "Together that is")
    text = f"{name} buys {_join(parts)}."
    if s % 2:
        return text + f" How much does {he} spend in total?"
    bill = _bill(total) * r.choice([1, 1, 2])
    b.op(bill, "-", total, f"{name} gets back")
    return text + f" {He} pays with ${bill}. How much change does {he} get?"


def _sharing(r: random.Random, s: int, b: Build) -> str:
    (name, he, _, his, He), (pal, *_) = _people(r, 2)
    item, box = r.choice(SHARE)
    if s == 1:
        f = r.randint(2, 9)
        v = f * r.randint(2, 12)
        have = b.key(f"{v} {item}", f"a pile of {item}", f"how many {item} {name} has")
        text = [f"{name} has {have}."]
    else:
        n_box, per = r.randint(2, 9), r.randint(2, 12)
        ps = b.key(str(per), "some", f"how many {item} are in each of the {box}")
        text = [f"{name} has {n_box} {box} with {ps} {item} in each."]
        v = b.op(n_box, "*", per, f"At first {name} has")
        # With no later moves to adjust, the divisor must come from the product itself.
        f = r.choice([d for d in range(2, 10) if v % d == 0]) if s == 2 else r.randint(2, 9)
        for sym, d in _moves(r, v, s - 2, 15, mod=f):
            verb = f"gets {d} more {item} from" if sym == "+" else f"gives {d} {item} to"
            text.append(f"{He} {verb} {pal}.")
            v = b.op(v, sym, d, f"Then {he} has")
    b.op(v, "/", f, "Each friend gets")
    text.append(f"{He} shares all of {his} {item} equally among {f} friends. "
                f"How many {item} does each friend get?")
    return " ".join(text)


def _travel(r: random.Random, s: int, b: Build) -> str:
    (name, he, _, _, _), = _people(r)
    verb, lo, hi = r.choice(MODES)
    if s == 1 and r.random() < 0.5:
        v, t = r.randint(lo, hi), r.randint(2, 6)
        dist = b.key(f"{v * t} km", "a long way", f"how far {name} travels")
        b.op(v * t, "/", v, "The trip takes")
        return f"{name} {verb} {dist} at {v} km per hour. How many hours does the trip take?"
    k = (s + 1) // 2  # k legs cost 2k - 1 steps; an even s adds the distance still to go
    hide, parts, total = r.randrange(k), [], 0
    for i in range(k):
        v, t = r.randint(lo, hi), r.randint(2, 5)
        vs = f"{v} km per hour"
        if i == hide:
            vs = b.key(vs, "a steady speed", f"how fast {name} goes on one part of the trip")
        parts.append(f"{'Then ' + he if i else name} {verb} at {vs} for {t} hours.")
        d = b.op(v, "*", t, "This part covers")
        total = d if i == 0 else b.op(total, "+", d, "So far that is")
    if s % 2:
        return " ".join(parts) + f" How many km does {he} travel in total?"
    trip = total + r.randint(5, 120)
    b.op(trip, "-", total, "The distance still to go is")
    return " ".join(parts) + f" The trip is {trip} km. How many km does {he} still have to go?"


def _ages(r: random.Random, s: int, b: Build) -> str:
    ppl = [p[0] for p in _people(r, s + 1)]
    age, hide = r.randint(4, 40), r.randrange(s)
    text = [f"{ppl[0]} is {age} years old."]
    for i in range(s):
        # Bounds keep every age between 2 and 95.
        opts = (["+"] if age <= 80 else []) + (["-"] if age >= 6 else [])
        opts += (["*"] if age <= 20 else []) + (["/"] if age % 2 == 0 and age >= 4 else [])
        sym = r.choice(opts)
        if sym in "+-":
            d = r.randint(2, 15) if sym == "+" else r.randint(1, min(15, age - 2))
            rel = f"{d} years {'older' if sym == '+' else 'younger'} than"
        else:
            d = (r.randint(2, 4 if age <= 12 else 3) if sym == "*" else
                 r.choice([m for m in (2, 3, 4) if age % m == 0 and age // m >= 2]))
            rel = f"{(TIMES if sym == '*' else PARTS)[d]} as old as"
        vague = "older than" if sym in "+*" else "younger than"
        if i == hide:
            rel = b.key(rel, vague, f"how {ppl[i + 1]}'s age compares to {ppl[i]}'s")
        text.append(f"{ppl[i + 1]} is {rel} {ppl[i]}.")
        age = b.op(age, sym, d, f"{ppl[i + 1]} is")
    return " ".join(text) + f" How old is {ppl[-1]}?"


def _savings(r: random.Random, s: int, b: Build) -> str:
    (name, he, him, his, He), = _people(r)
    w, n = r.randint(2, 25), r.randint(2, 12)
    ws = b.key(f"${w}", "some money", f"how much {name} saves each week")
    text = [f"{name} starts with an empty piggy bank and saves {ws} every week for {n} weeks."]
    v = b.op(w, "*", n, f"{name} saves")
    goal = s >= 2 and r.random() < 0.35
    for sym, d in _moves(r, v, s - 1 - goal, 40):
        if sym == "-":
            text.append(f"{He} spends ${d} on {r.choice(BUYS)}.")
        elif r.random() < 0.5:
            text.append(f"{He} also earns ${d} {r.choice(CHORES)}.")
        else:
            text.append(f"{He} gets ${d} from {his} {r.choice(RELATIVES)}.")
        v = b.op(v, sym, d, f"Then {he} has")
    if not goal:
        return " ".join(text) + f" How much money does {he} have now?"
    price = v + r.randint(5, 60)
    b.op(price, "-", v, f"{He} still needs")
    return " ".join(text) + (f" {He} wants a {r.choice(GOALS)} that costs ${price}. "
                             f"How much more money does {he} need?")


def _recipe(r: random.Random, s: int, b: Build) -> str:
    (name, he, _, _, _), = _people(r)
    dish, batches = r.choice(DISHES), r.randint(2, 6)
    scale = s >= 2 and r.random() < 0.5  # scaling by servings costs one division
    m = s - scale
    ings, amts, hide = r.sample(INGS, m), [r.randint(2, 6) for _ in range(m)], r.randrange(m)
    parts = [f"{a} cups of {g}" if i != hide else
             b.key(f"{a} cups of {g}", f"some {g}", f"how much {g} the recipe needs")
             for i, (a, g) in enumerate(zip(amts, ings))]
    if scale:
        size = r.choice([4, 6, 8, 10, 12, 24])
        text = (f"A recipe for {size} {dish} uses {_join(parts)}. "
                f"{name} wants to make {size * batches} {dish}.")
        batches = b.op(size * batches, "/", size, "The number of batches is")
    else:
        text = f"One batch of {dish} uses {_join(parts)}. {name} makes {batches} batches."
    per = amts[0]
    for a in amts[1:]:
        per = b.op(per, "+", a, "Cups for one batch:")
    b.op(batches, "*", per, "In total that is")
    what = f"cups of {ings[0]}" if m == 1 else "cups of ingredients"
    return text + f" How many {what} does {he} need in total?"


def _rectangle(r: random.Random, s: int, b: Build) -> str:
    if s <= 2 or (s == 3 and r.random() < 0.5):
        place, l, w = r.choice(PLACES), r.randint(3, 30), r.randint(2, 20)
        wide = b.key(f" and {w} m wide", "", f"how wide the {place} is")
        text = f"A {place} is {l} m long{wide}."
        if s == 1:
            b.op(l, "*", w, "The area is")
            return text + " What is its area in square meters?"
        per = b.op(b.op(l, "+", w, "Length plus width is"), "*", 2, "The perimeter is")
        if s == 2:
            return text + " How many meters of fence are needed to go all the way around it?"
        p = r.randint(2, 9)
        b.op(per, "*", p, "The fence costs")
        return text + f" Fencing costs ${p} per meter. How much does it cost to fence the {place}?"
    (name, _, _, _, _), = _people(r)
    k = (s + 1) // 2  # k rooms cost 2k - 1 steps; an even s adds the carpet price
    hide, parts, total = r.randrange(k), [], 0
    for i, room in enumerate(r.sample(ROOMS, k)):
        l, w = r.randint(2, 9), r.randint(2, 8)
        dims = f"{l} m by {w} m"
        if i == hide:
            dims = b.key(dims, f"{l} m long", f"how wide the {room} is")
        parts.append(f"the {room} is {dims}")
        a = b.op(l, "*", w, f"The {room} has an area of")
        total = a if i == 0 else b.op(total, "+", a, "Together that is")
    text = f"In {name}'s home, {_join(parts)}."
    if s % 2:
        return text + " What is the total floor area of these rooms in square meters?"
    p = r.randint(2, 30)
    b.op(total, "*", p, "The carpet costs")
    return text + f" Carpet costs ${p} per square meter. How much does it cost to carpet them all?"


def _discount(r: random.Random, s: int, b: Build) -> str:
    (name, he, _, _, _), = _people(r)
    item, pct = r.choice(SALE), r.choice([10, 15, 20, 25, 30, 40, 50, 60, 75])
    unit = 100 // math.gcd(pct, 100)  # smallest price whose discount is whole dollars
    price = unit * r.randint(max(1, 10 // unit), 400 // unit)
    off_text = b.key(f"{pct}% off", "on sale", "how big the discount is")
    text = f"A {item} costs ${price}. This week it is {off_text}."
    off = b.op(b.op(price, "*", pct, "Price times percentage is"), "/", 100, "The discount is")
    if s == 2:
        return text + f" How many dollars does {name} save by buying it this week?"
    now = b.op(price, "-", off, "The sale price is")
    if s == 3:
        return text + f" How much does {name} pay for it this week?"
    q = r.randint(2, 5)
    total = b.op(now, "*", q, "All of them cost")
    text += f" {name} buys {q} of them this week"
    if s == 4:
        return text + f". How much does {he} pay?"
    bill = _bill(total)
    b.op(bill, "-", total, "The change is")
    return text + f" and pays with ${bill}. How much change does {he} get?"


def _packs(r: random.Random, s: int, b: Build) -> str:
    (name, he, _, _, He), = _people(r)
    item = r.choice(PACK_ITEMS)
    guests = s >= 3 or (s == 2 and r.random() < 0.5)  # counting guests costs one product
    if guests:
        g, per = r.randint(3, 12), r.randint(2, 5)
        text = f"{name} is having a party for {g} guests and wants {per} {item} for each guest."
        need = b.op(g, "*", per, f"{name} needs")
        k = r.choice([d for d in range(2, 13) if need % d == 0])
    else:
        k = r.randint(2, 12)
        need = k * r.randint(2, 10)
        text = f"{name} needs {need} {item} for a school fair."
    pack = b.key(f"packs of {k}", "packs", f"how many {item} come in a pack")
    text += f" The {item} are sold in {pack}."
    packs = b.op(need, "/", k, "The number of packs is")
    if s == 1 or (s == 2 and guests):
        return text + f" How many packs does {he} need to buy?"
    price = r.randint(2, 9)
    cost = b.op(packs, "*", price, "The packs cost")
    text += f" Each pack costs ${price}."
    if s <= 3:
        return text + f" How much does {he} spend on {item}?"
    bill = _bill(cost)
    b.op(bill, "-", cost, "The change is")
    return text + f" {He} pays with ${bill}. How much change does {he} get?"


def _collecting(r: random.Random, s: int, b: Build) -> str:
    (name, he, him, his, _), (pal, *_) = _people(r, 2)
    thing, v = r.choice(COLLECT), r.randint(5, 60)
    start = b.key(f"{v} {thing}", f"a box of {thing}", f"how many {thing} {name} starts with")
    text, left, day = [f"{name} has {start}."], s, 0
    while left:
        when = f"On {DAYS[day]}," if day < len(DAYS) else "After that,"
        day += 1
        ok = {"+": True, "-": v > 1, "*": v <= 60, "/": v % 2 == 0, "rate": left >= 2}
        kind = r.choice([o for o, good in ok.items() if good])
        if kind == "rate":  # x per day for n days costs two steps
            x, n = r.randint(2, 9), r.randint(2, 6)
            text.append(f"Over the next {n} days {he} finds {x} {thing} each day.")
            v = b.op(v, "+", b.op(x, "*", n, f"Over those days {he} finds"), f"Then {he} has")
            left -= 2
            continue
        d = r.randint(1, 20) if kind == "+" else r.randint(1, min(20, v - 1)) if kind == "-" else 2
        text.append(when + {
            "+": f" {he} buys {d} more.",
            "-": f" {he} gives {d} of them to {pal}.",
            "*": f" {his} {r.choice(RELATIVES)} gives {him} as many {thing} as {he} already has.",
            "/": f" {he} gives half of {his} {thing} to {pal}."}[kind])
        v = b.op(v, kind, d, f"Then {he} has")
        left -= 1
    return " ".join(text) + f" How many {thing} does {name} have now?"


def _workers(r: random.Random, s: int, b: Build) -> str:
    team, verb, item = r.choice(JOBS)
    n, rate = r.randint(2, 9), r.randint(2, 12)
    rs = b.key(f"{rate} {item} per hour", f"{item} at a steady pace",
               f"how many {item} each of the {team} makes per hour")
    text = f"In a workshop, {n} {team} each {verb} {rs}."
    together = b.op(n, "*", rate, "Together they make")
    if s == 1:
        return text + f" How many {item} do they {verb} together in one hour?"
    h = r.randint(2, 8)
    made = b.op(together, "*", h, "In those hours they make")
    if s == 2:
        return text + f" How many {item} do they {verb} in {h} hours?"
    order = made + (together * r.randint(1, 6) if s == 4 else r.randint(1, 100))
    text += f" They have an order for {order} {item}."
    remaining = b.op(order, "-", made, "Still to make:")
    if s == 3:
        return text + f" How many {item} are still needed after {h} hours of work?"
    b.op(remaining, "/", together, "More hours needed:")
    return text + f" After {h} hours of work, how many more hours do they need to finish the order?"


def _reading(r: random.Random, s: int, b: Build) -> str:
    (name, he, _, _, He), = _people(r)
    r1, d1 = r.randint(5, 30), r.randint(2, 9)
    if s == 1:
        rs = b.key(f"{r1} pages", "a few pages", f"how many pages {name} reads each day")
        b.op(r1, "*", d1, f"{name} reads")
        return f"{name} reads {rs} every day. How many pages does {he} read in {d1} days?"
    r2, d2 = r.randint(5, 40), r.randint(2, 9)
    read = r1 * d1 + (r2 * d2 if s == 4 else 0)
    # s == 3 asks for days at rate r2, so the pages left must be a multiple of r2.
    pages = read + (r2 * r.randint(2, 10) if s == 3 else r.randint(10, 200))
    book = b.key(f"a {pages}-page book", "a new book", "how many pages the book has")
    text = f"{name} is reading {book}. {He} reads {r1} pages a day for {d1} days."
    done = b.op(r1, "*", d1, f"At first {he} reads")
    if s == 4:
        done = b.op(done, "+", b.op(r2, "*", d2, f"Next {he} reads"), "Altogether that is")
        text += f" Then {he} reads {r2} pages a day for {d2} days."
    remaining = b.op(pages, "-", done, "Pages left:")
    if s != 3:
        return text + " How many pages are left to read?"
    b.op(remaining, "/", r2, "Days still needed:")
    return text + f" Then {he} reads {r2} pages a day. How many more days does {he} need to finish?"


def _bus(r: random.Random, s: int, b: Build) -> str:
    vehicle, v = r.choice(VEHICLES), r.randint(5, 40)
    ps = b.key(f"{v} passengers", "some passengers", "how many passengers it starts with")
    text = [f"A {vehicle} leaves its first stop with {ps}."]
    for i, (sym, d) in enumerate(_moves(r, v, s, 15)):
        who = ("1 person gets" if d == 1 else f"{d} people get") + (" on" if sym == "+" else " off")
        text.append(f"At the {'next' if i else 'second'} stop, {who}.")
        v = b.op(v, sym, d, "Now there are")
    return " ".join(text) + f" How many passengers are on the {vehicle} now?"


# name -> (builder, fewest steps, most steps); a builder uses exactly the steps it is given.
BUILDERS: dict[str, tuple[Callable[[random.Random, int, Build], str], int, int]] = {
    "shopping": (_shopping, 1, 2 * len(SHOP)),
    "sharing": (_sharing, 1, MAX_STEPS),
    "travel": (_travel, 1, 12),
    "ages": (_ages, 1, 10),
    "savings": (_savings, 1, MAX_STEPS),
    "recipe": (_recipe, 1, len(INGS)),
    "rectangle": (_rectangle, 1, 2 * len(ROOMS)),
    "discount": (_discount, 2, 5),
    "packs": (_packs, 1, 4),
    "collecting": (_collecting, 1, MAX_STEPS),
    "workers": (_workers, 1, 4),
    "reading": (_reading, 1, 4),
    "bus": (_bus, 1, MAX_STEPS),
}
TEMPLATES: tuple[str, ...] = tuple(BUILDERS)
