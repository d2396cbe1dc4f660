"""Word pools and value samplers for the demo corpus, split into a training part and a held-out part.

Every name or value that can end up in a function call is drawn through a `Lexicon` for one split. A word,
pseudo-word, number (10 and up) or float belongs to the held-out split when the CRC-32 of its text is 0 mod 5,
so the two splits share no function names, argument names or numbers >= 10 (digits 0-9 are shared: they are
single tokens and every number is made of them). Seeds' own values (San Francisco, celsius, add, mul...)
are pinned to the training split.
"""

from __future__ import annotations

import random
import zlib

NOUNS = """
account address album alarm animal answer apple area article artist asset audio badge bag balance ball band
bank basket battery beach bean bed bike bill bird block blog board boat body bonus book border bottle box
brand bread bridge budget bug building bus button cabin cable cake camera campaign candle car card cargo
cart case cash castle cat chair channel chapter chart cheese chip circle city class clock cloud club coach
code coffee coin color column comment company contact contract cookie copy corner cost country coupon course
court cover credit crop cup currency customer cycle dance data date deal deck degree delivery depth design
device diary dish disk doctor document dog door draft dream dress drink driver drone engine entry episode
event exam farm fee field file film filter flag flight floor flower folder font food forest form frame
fruit fuel game garden gate gift glass goal grade graph group guest guide hall hat height helmet hero hill
holiday hotel hour house image index invoice island item jacket job journey key kitchen label lake lamp
land language laptop layer lesson letter level library license light limit line link list loan lock log
machine map market match meal medal member memory menu message meter metric mirror mode model module moon
motor mountain movie museum music name network node note number ocean office order owner package page
painting pair panel paper park part party pass password path patient payment pen pencil phone photo piano
picture pipe pizza plan planet plant plate player playlist plot pocket poem point policy pool port post
poster power price printer prize product profile project property puzzle query queue quiz race radio rail
rate recipe record region report request reservation result review reward ring river road robot rocket role
room root route rule salary sample scale schedule school score screen script season seat sector sensor
server session shape share sheet shelf ship shirt shoe shop signal size skill sky slot snow song sound space
speed sport stage star station status step stock stone store story street student style subject summary
survey sweater table tag tank target task tax team temperature tent term test theme ticket tile timer title
token tool topic tour tower town track trade traffic train tree trip truck unit user valley value vehicle
version video village visit voice volume vote wallet watch water wave weather website week weight wheel
window wine word worker year zone
""".split()

VERBS = """
get set find fetch check compute calculate convert create update delete list search book send cancel count
lookup query estimate measure predict translate validate schedule reserve order track start stop open close
load save rate rank sort filter merge split scan sync verify register assign
""".split()

ADJECTIVES = """
current total daily weekly monthly annual average max min local global public private recent next last first
new old active open closed main extra short long fast slow daily hourly remote nearby default final
""".split()

CITIES = """
Beijing|Shanghai|Tokyo|Paris|London|Berlin|Madrid|Rome|Cairo|Sydney|Toronto|Chicago|Boston|Seattle|Denver|Dallas
|Houston|Miami|Atlanta|Phoenix|Austin|Portland|Oslo|Vienna|Prague|Dublin|Lisbon|Athens|Istanbul|Moscow|Seoul
|Osaka|Kyoto|Hangzhou|Shenzhen|Guangzhou|Chengdu|Wuhan|Nanjing|Xian|Singapore|Bangkok|Hanoi|Manila|Jakarta
|Mumbai|Delhi|Dubai|Doha|Nairobi|Lagos|Lima|Bogota|Santiago|Havana|Helsinki|Stockholm|Warsaw|Budapest
|Zurich|Geneva|Milan|Naples|Venice|Munich|Hamburg|Lyon|Nice|Porto|Seville|Valencia|Edinburgh|Glasgow
|San Francisco|Los Angeles|New York|Las Vegas|San Diego|New Delhi|Hong Kong|Mexico City|Buenos Aires
|Rio de Janeiro|Cape Town|Kuala Lumpur|Tel Aviv|Salt Lake City|Ho Chi Minh City|Abu Dhabi|Sao Paulo
""".replace("\n", "").split("|")

PEOPLE = """
Alice Bob Carol David Emma Frank Grace Henry Irene Jack Kate Leo Mia Noah Olivia Paul Quinn Rosa Sam Tina
Uma Victor Wendy Xavier Yuki Zoe Liam Ava Ethan Sophia Lucas Chloe Mason Lily Ryan Nora Oscar Ruby Hugo Ivy
Li Wang Zhang Liu Chen Yang Zhao Huang Zhou Wu Xu Sun Hu Zhu Gao Lin He Guo Ma Luo
""".split()

UNITS = "celsius fahrenheit kelvin meters feet miles kilometers grams kilograms pounds liters dollars euros yuan"
UNITS = UNITS.split()

# the things a weather-like tool is asked about, kept in training so the seeds' weather example works
WEATHER_WORDS = ("temperature", "weather", "humidity", "forecast", "rainfall", "wind speed", "air quality")

# pinned to the training split whatever their hash: the seeds' own names and values
PINNED = {
    "add",
    "mul",
    "a",
    "b",
    "location",
    "unit",
    "date",
    "celsius",
    "fahrenheit",
    "San Francisco",
    "temperature",
    "current",
    "get",
    "weather",
    "city",
    "place",
}

_ONSETS = "b c d f g h j k l m n p r s t v w z br ch cl dr fl gr kr pl pr sh st tr th qu zh".split()
_VOWELS = "a e i o u a e i o u ai ea ou io".split()
_CODAS = ["", "", "", "n", "r", "l", "s", "x", "m", "k", "nd", "st"]
_LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
_LETTER_WEIGHTS = (12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 3, 2, 2, 2, 2, 2, 1.5, 1, 1, 1, 1, 1, 1)

ZH_ANIMALS = "狐狸 兔子 小猫 小狗 熊猫 老虎 狮子 小鸟 小鱼 乌龟 猴子 大象 松鼠 小羊 小鹿 青蛙 蝴蝶 蜜蜂 刺猬 企鹅"
ZH_ANIMALS = ZH_ANIMALS.split()
ZH_THINGS = "西瓜 苹果 月亮 星星 雨伞 风筝 宝石 钥匙 小船 蛋糕 帽子 铃铛 花朵 彩虹 灯笼 石头 书包 气球 蘑菇 萝卜"
ZH_THINGS = ZH_THINGS.split()
ZH_PLACES = "森林 河边 山顶 草原 花园 海边 村庄 小镇 湖边 果园".split()
EN_ANIMALS = (
    "fox rabbit cat dog panda tiger lion bird fish turtle monkey elephant squirrel sheep deer frog owl bear".split()
)
EN_THINGS = (
    "watermelon apple moon star umbrella kite gem key boat cake hat bell flower rainbow lantern stone "
    "balloon mushroom carrot map"
).split()
EN_PLACES = "forest river hill meadow garden beach village town lake orchard".split()


def held_out(text: str) -> bool:
    """Whether `text` (a word, a name, a number's digits) belongs to the held-out split."""
    return text not in PINNED and zlib.crc32(text.encode("utf-8")) % 5 == 0


class Lexicon:
    """Samplers that only ever return names and values of one split ("train" or "heldout")."""

    def __init__(self, rng: random.Random, split: str) -> None:
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        self.rng = rng
        self.heldout = split == "heldout"
        keep = self._keep
        self.nouns = [w for w in NOUNS if keep(w)]
        self.verbs = [w for w in VERBS if keep(w)]
        self.adjectives = [w for w in ADJECTIVES if keep(w)]
        self.cities = [w for w in CITIES if keep(w)]
        self.people = [w for w in PEOPLE if keep(w)]
        self.units = [w for w in UNITS if keep(w)]

    def _keep(self, text: str) -> bool:
        return held_out(text) == self.heldout

    def _draw(self, make) -> str:  # noqa: ANN001 - a zero-argument sampler
        while True:
            value = make()
            if self._keep(value):
                return value

    # ---- words and names

    def pseudo_word(self) -> str:
        r = self.rng

        def make() -> str:
            n = r.choice((2, 2, 2, 3))
            return "".join(r.choice(_ONSETS) + r.choice(_VOWELS) for _ in range(n - 1)) + (
                r.choice(_ONSETS) + r.choice(_VOWELS) + r.choice(_CODAS)
            )

        return self._draw(make)

    def random_letters(self) -> str:
        """3-9 letters drawn by English letter frequency: no prior can guess them, only copying works."""
        r = self.rng
        return self._draw(lambda: "".join(r.choices(_LETTERS, weights=_LETTER_WEIGHTS, k=r.randint(3, 9))))

    def word(self, real_share: float = 0.35) -> str:
        """A noun of this split (`real_share` of the time), else a made-up word: syllables or random letters."""
        r = self.rng.random()
        if r < real_share:
            return self.rng.choice(self.nouns)
        return self.pseudo_word() if r < real_share + (1 - real_share) / 2 else self.random_letters()

    def verb(self) -> str:
        return self.rng.choice(self.verbs) if self.rng.random() < 0.55 else self.word(0.0)

    def words(self, k: int, real_share: float = 0.35) -> list[str]:
        out: list[str] = []
        while len(out) < k:
            w = self.word(real_share)
            if w not in out:
                out.append(w)
        return out

    # ---- values

    def integer(self) -> int:
        r = self.rng

        def make() -> str:
            digits = r.choices((1, 2, 3, 4, 5, 6), weights=(2, 4, 4, 3, 2, 1))[0]
            n = r.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
            return str(-n if r.random() < 0.08 and n else n)

        return int(self._draw_number(make))

    def small_integer(self, low: int = 2, high: int = 99) -> int:
        return int(self._draw_number(lambda: str(self.rng.randint(low, high))))

    def decimal(self) -> float:
        """A float with one or two decimals, the last one non-zero (so its JSON text is the question's)."""
        r = self.rng

        def make() -> str:
            frac = str(r.randint(1, 9)) if r.random() < 0.6 else f"{r.randint(0, 9)}{r.randint(1, 9)}"
            return f"{r.randint(0, 999)}.{frac}"

        return float(self._draw(make))

    def _draw_number(self, make) -> str:  # noqa: ANN001
        """Single digits are in both splits (held-out draws skip them); longer numbers follow their hash."""
        while True:
            text = make()
            if self.number_ok(text):
                return text

    def number_ok(self, value: object) -> bool:
        """Whether a number (or its text) may appear in this split."""
        magnitude = str(value).lstrip("-")
        if len(magnitude) == 1:
            return not self.heldout
        return self._keep(magnitude)

    def reading(self, low: float, high: float) -> float | int:
        """A measurement with one decimal (mostly) or a whole number, of this split."""
        r = self.rng
        while True:
            value: float | int = round(r.uniform(low, high), 1) if r.random() < 0.8 else r.randint(int(low), int(high))
            if self.number_ok(value):
                return value

    def date(self) -> str:
        r = self.rng
        while True:
            parts = (r.randint(1990, 2035), r.randint(1, 12), r.randint(1, 28))
            text = f"{parts[0]}-{parts[1]:02d}-{parts[2]:02d}"
            if self._keep(text) and (self.heldout or all(self.number_ok(p) for p in parts)):
                return text

    def code(self) -> str:
        r = self.rng
        letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
        while True:
            n = r.randint(10, 9999)
            text = "".join(r.choices(letters, k=r.randint(2, 3))) + "-" + str(n)
            if self._keep(text) and (self.heldout or self.number_ok(n)):
                return text

    def city(self) -> str:
        return self.rng.choice(self.cities)

    def person(self) -> str:
        return self.rng.choice(self.people)

    def string_value(self) -> str:
        """A free string argument: a word, a name, a city, a code or a couple of words."""
        r = self.rng
        kind = r.random()
        if kind < 0.35:
            return self.word(0.3)
        if kind < 0.42:
            return self.person()
        if kind < 0.5:
            return self.city()
        if kind < 0.65:
            return self.code()
        if kind < 0.8:
            return self.word(0.3).capitalize()
        return " ".join(self.words(2, 0.3))
