"""Numbers written with words and marks: scale words after a number (15 ribu, 1,5 triệu, 2 ล้าน 5 แสน, 1만 5천), sign
words before one (minus 5, âm 7, ลบ 5), mixed numbers (1 1/2) and vulgar fractions (½). The answer reward and the
accuracy suite read them alike (alignment/numbers.py: plain_number_words): each row is checked against its value and
against the values a misreading gives, through both graders."""

from __future__ import annotations

import unicodedata

import pytest

from tempa.alignment.answer_text import gives_reference
from tempa.alignment.numbers import plain_number_words
from tempa.alignment.rewards import answer_match
from tempa.merge.answers import answer_matches


def graded(reply: str, reference: object, language: str | None) -> tuple[bool, bool, bool]:
    """Whether ``reply`` gives ``reference`` by the shared rule, the answer reward (match: auto) and the suite."""
    return (gives_reference(reply, reference, language), answer_match(reply, reference, "auto", None, language) == 1.0,
            answer_matches(reply, reference, language=language))


def assert_reads(language: str | None, reply: str, right: object, wrong: list[object]) -> None:
    assert graded(reply, right, language) == (True, True, True), f"{reply!r} should give {right!r}"
    for value in wrong:
        assert graded(reply, value, language) == (False, False, False), f"{reply!r} should not give {value!r}"


# (language, reply, its value, values a misreading gives)
SCALE_WORDS = [
    ("id", "Jawabannya 15 ribu rupiah.", "15000", ["15"]),  # the trial's reward hack: 15 scored 1
    ("vi", "Đáp án là 15 nghìn đồng", "15000", ["15"]),
    ("vi", "Đáp án là 15 ngàn đồng.", "15000", ["15"]),
    ("id", "Jawabannya 2 juta.", "2000000", ["2"]),
    ("vi", "Đáp án là 2 triệu.", "2000000", ["2"]),
    ("vi", "Đáp án là 1,5 triệu đồng", "1500000", ["1.5", "15", "1500"]),  # a decimal comma
    ("id", "Jawabannya Rp 1,5 juta.", "1500000", ["1.5"]),
    ("id", "Jawabannya 1.500 ribu rupiah.", "1500000", ["1500", "1.5"]),  # a dot groups thousands in Indonesian
    ("ms", "Jawapannya ialah 1.5 juta.", "1500000", ["1.5", "1500000000"]),  # Malay writes a decimal point
    ("ms", "Jawapannya ialah 3 bilion.", "3000000000", ["3"]),
    ("id", "Jawabannya 4 miliar.", "4000000000", ["4"]),
    ("id", "Jawabannya 5 ratus.", "500", ["5"]),
    ("id", "Jawabannya 15rb.", "15000", ["15"]),
    ("id", "Jawabannya 2 juta 500 ribu rupiah.", "2500000", ["2", "2000000", "500000"]),
    ("vi", "Đáp án là 2 triệu 500 nghìn đồng.", "2500000", ["2", "2000000"]),
    ("vi", "Đáp số: 1 nghìn tỷ", "1000000000000", ["1", "1000"]),
    ("vi", "Đáp án là 5 trăm.", "500", ["5"]),
    ("vi", "Đáp án là 3 tỉ.", "3000000000", ["3"]),
    ("vi", unicodedata.normalize("NFD", "Đáp án là 2 triệu đồng."), "2000000", ["2"]),  # typed decomposed
    ("th", "คำตอบคือ 1 หมื่นบาท", "10000", ["1"]),
    ("th", "คำตอบคือ1หมื่นบาท", "10000", ["1"]),
    ("th", "คำตอบคือ 2 ล้าน 5 แสนบาท", "2500000", ["2", "2000000", "5"]),
    ("th", "คำตอบคือ 3 พันล้าน", "3000000000", ["3", "3000"]),
    ("th", "คำตอบคือ 5 ร้อยคน", "500", ["5"]),
    ("th", "คำตอบคือ ๒ แสน", "200000", ["2"]),  # Thai digits
    ("tl", "Ang sagot ay 15 libo.", "15000", ["15"]),
    ("tl", "Ang sagot ay 2 milyong piso.", "2000000", ["2"]),
    ("en", "The answer is 3 million.", "3000000", ["3"]),
    ("en", "The answer is 2.5 thousand.", "2500", ["2.5"]),
    ("en", "The answer is 1,5 million.", "1500000", ["1.5"]),  # 1,5 is a decimal comma in every language
    ("ko", "정답은 1만 5천 원입니다.", "15000", ["1", "5", "10000"]),
    ("ko", "정답은 1만5천원", "15000", ["1", "10000"]),
    ("ko", "정답은 2억 3천만 원", "230000000", ["2", "200000000"]),
    ("id", "Harganya 15 ribu rupiah", "15000", ["15"]),  # the last number, no lead-in
    ("id", "\\boxed{15 \\text{ ribu}}", "15000", ["15"]),
    ("id", "\\boxed{15 \\text{ ribu rupiah}}", "15000", ["15"]),
    ("vi", "Đáp án là $1,5 \\text{ triệu}$ đồng.", "1500000", ["1.5"]),
]


@pytest.mark.parametrize(("language", "reply", "right", "wrong"), SCALE_WORDS)
def test_a_scale_word_multiplies_the_number_before_it(language: str, reply: str, right: str, wrong: list[str]) -> None:
    assert_reads(language, reply, right, wrong)


SIGN_WORDS = [
    ("vi", "Đáp án là âm 7", "-7", ["7"]),
    ("vi", "Đáp án là âm 7 độ C.", "-7", ["7"]),
    ("id", "Jawabannya minus 5.", "-5", ["5"]),
    ("id", "Jawabannya adalah negatif 5", "-5", ["5"]),
    ("ms", "Jawapannya ialah negatif 12.", "-12", ["12"]),
    ("tl", "Ang sagot ay negatibo 4.", "-4", ["4"]),
    ("en", "The answer is minus 5.", "-5", ["5"]),
    ("en", "The answer is Minus 5.", "-5", ["5"]),
    ("en", "The answer is negative 3.5", "-3.5", ["3.5"]),
    ("th", "คำตอบคือ ลบ 5", "-5", ["5"]),
    ("th", "คำตอบคือลบ5", "-5", ["5"]),
    ("th", "คำตอบคือ ติดลบ 5 องศา", "-5", ["5"]),
    ("ko", "정답은 마이너스 5입니다.", "-5", ["5"]),
    ("vi", "Đáp án là âm 1,5 triệu", "-1500000", ["1500000", "-1.5", "1.5"]),
    # the same words in Japanese, Chinese, Korean, Filipino and Tamil (each gave 5)
    ("ja", "答えはマイナス5です。", "-5", ["5"]),
    ("ja", "答えはマイナス 5 です。", "-5", ["5"]),
    ("zh", "答案是负5。", "-5", ["5"]),
    ("zh", "答案是負5。", "-5", ["5"]),
    ("zh", "答案是零下5度。", "-5", ["5"]),
    ("zh", "答案是零下五度。", "-5", ["5", "0"]),
    ("ko", "정답은 영하 5도입니다.", "-5", ["5"]),
    ("tl", "Ang sagot ay negatibong 5.", "-5", ["5"]),
    ("ta", "விடை மைனஸ் 5.", "-5", ["5"]),
]


@pytest.mark.parametrize(("language", "reply", "right", "wrong"), SIGN_WORDS)
def test_a_sign_word_makes_the_number_after_it_negative(language: str, reply: str, right: str,
                                                        wrong: list[str]) -> None:
    assert_reads(language, reply, right, wrong)


FRACTIONS = [
    ("id", "Jawabannya adalah 1 1/2 jam.", "1.5", ["1", "0.5", "5.5"]),
    ("en", "The answer is 2 1/3 cups.", "7/3", ["2", "1/3"]),
    ("en", "The answer is 3 3/4", "3.75", ["3", "0.75"]),
    ("vi", "Đáp án là 2 1/4 giờ.", "2.25", ["2", "0.25"]),
    ("en", "The answer is ½.", "0.5", ["1", "2"]),
    ("en", "The answer is 1½ hours", "1.5", ["1", "5.5"]),
    ("vi", "Đáp án là 2¾", "2.75", ["2", "0.75"]),
    ("id", "Jawabannya ⅔", "2/3", ["2", "3"]),
    ("id", "Jawabannya 1 ⅓ liter.", "4/3", ["1", "1/3"]),
    ("en", "The answer is 1⁄2.", "0.5", ["1", "2"]),  # the fraction slash NFKC writes for ½
    ("en", "\\boxed{2\\frac{1}{3}}", "7/3", ["1/3", "2"]),
    ("en", "The answer is 1\\frac{1}{2}.", "1.5", ["1", "0.5"]),
    ("id", "Jawabannya 1½ juta.", "1500000", ["1.5", "1"]),
]


@pytest.mark.parametrize(("language", "reply", "right", "wrong"), FRACTIONS)
def test_mixed_numbers_and_vulgar_fractions_are_one_number(language: str, reply: str, right: str,
                                                           wrong: list[str]) -> None:
    assert_reads(language, reply, right, wrong)


# Words that only look like a scale or sign word: the number is read as written.
NOT_WORDS = [
    ("vi", "Đáp án là 3 triệu chứng.", "3", ["3000000"]),  # 3 symptoms
    ("vi", "Đáp án là 2 triệu phú.", "2", ["2000000"]),  # 2 millionaires
    ("vi", "Đáp án là 2 tỉ lệ.", "2", ["2000000000"]),  # 2 ratios
    ("vi", "Đáp án là 5 Trăm Hoa.", "5", ["500"]),  # a name
    ("th", "คำตอบคือ 5 พันธุ์", "5", ["5000"]),  # 5 breeds
    ("id", "Jawabannya 7. Ratusan orang datang.", "7", ["700"]),
    ("id", "Jawabannya 15 ribuan.", "15", ["15000"]),  # "15 thousands of": no one number
    ("ko", "정답은 5만큼입니다.", "5", ["50000"]),  # as much as 5
    ("en", "The answer is 10 minus 5 = 5.", "5", ["-5"]),  # subtraction
    ("en", "x minus 3", "3", ["-3"]),
    ("th", "ผลลัพธ์: 10 ลบ 5 = 5", "5", ["-5"]),
    ("ja", "10マイナス5は5です。", "5", ["-5"]),  # subtraction
    ("zh", "结果是10负5", "5", ["-5"]),
    ("th", "คำตอบคือ หลบ 5 ครั้ง", "5", ["-5"]),  # ลบ ends another word (dodge)
    ("en", "The answer is 1/2.", "0.5", ["1", "2"]),
    ("en", "The answer is 5 3/2.", "5", ["6.5"]),  # no proper fraction: no mixed number
]


@pytest.mark.parametrize(("language", "reply", "right", "wrong"), NOT_WORDS)
def test_a_word_that_only_looks_like_a_number_word_changes_nothing(language: str, reply: str, right: str,
                                                                   wrong: list[str]) -> None:
    assert_reads(language, reply, right, wrong)


# A reference written with the same words: (language, reference, a reply that gives it, replies that do not)
REFERENCES = [
    ("id", "15 ribu rupiah", "Jawabannya 15.000 rupiah.", ["Jawabannya 15 rupiah.", "Jawabannya 15."]),
    ("id", "15 ribu", "Jawabannya 15000.", ["Jawabannya 15."]),
    ("vi", "1,5 triệu đồng", "Đáp án là 1.500.000 đồng", ["Đáp án là 1,5 đồng"]),
    ("th", "1 หมื่นบาท", "คำตอบคือ 10000 บาท", ["คำตอบคือ 1 บาท"]),
    ("en", "1 1/2", "The answer is 1.5", ["The answer is 5.5", "The answer is 11/2", "The answer is 1"]),
    ("en", "½", "The answer is 0.5", ["The answer is 1", "The answer is 2"]),
    ("en", "1½", "The answer is 3/2", ["The answer is 1", "The answer is 5.5"]),
    ("en", "minus 5", "The answer is -5", ["The answer is 5"]),
]


@pytest.mark.parametrize(("language", "reference", "right", "wrong"), REFERENCES)
def test_a_reference_written_with_number_words_is_its_value(language: str, reference: str, right: str,
                                                            wrong: list[str]) -> None:
    assert graded(right, reference, language) == (True, True, True)
    for reply in wrong:
        assert graded(reply, reference, language) == (False, False, False), reply


@pytest.mark.parametrize(("language", "text", "plain"), [
    ("id", "Harga 15 ribu dan 2 juta", "Harga 15000 dan 2000000"),
    ("vi", "1,25 nghìn", "1250"),  # a decimal comma
    ("en", "1,125 thousand", "1125000"),  # a comma before three digits groups, in every language
    ("id", "0,001125 juta", "1125"),
    ("vi", "0,001125 nghìn", "1.1250"),  # 1.125 as 1.1250: no three decimals for a dot to group
    ("vi", "500 nghìn 2 triệu", "500000 2000000"),  # rising: two numbers
    ("th", "2 ล้าน 15 แสน", "2000000 1500000"),
    ("vi", unicodedata.normalize("NFD", "2 triệu đồng"), unicodedata.normalize("NFD", "2000000 đồng")),
    ("vi", unicodedata.normalize("NFD", "3 triệu chứng"), unicodedata.normalize("NFD", "3 triệu chứng")),
    ("id", "15 ribu ribu", "15 ribu ribu"),
    ("id", "1,2,3 juta", "1,2,3 juta"),  # a list
    ("en", "2^3 thousand", "2^3 thousand"),  # an exponent is multiplied by nothing
    ("en", "1/2 million", "1/2 million"),
])
def test_plain_number_words(language: str, text: str, plain: str) -> None:
    assert plain_number_words(text, language) == plain


def test_a_reading_of_a_fraction_is_not_regrouped() -> None:
    """0,001125 ribu is 1.125, not the 1125 that "1.125" is where a dot groups thousands."""
    assert graded("Jawabannya 0,001125 ribu.", 1.125, "id") == (True, True, True)
    assert graded("Jawabannya 0,001125 ribu.", 1125, "id") == (False, False, False)


def test_math_verify_reads_the_words_too() -> None:
    """A math reference is compared by math-verify, after the same reading."""
    assert graded("The answer is x = minus 5.", "x=-5", "en") == (True, True, True)
    assert graded("The answer is x = 5.", "x=-5", "en") == (False, False, False)
    assert graded("The answer is x = 1 1/2.", "x=3/2", "en") == (True, True, True)
