"""Numbers as Japanese, Chinese, Thai and Vietnamese replies write them: the preference/rl `answer` reward and the
evaluate stage's accuracy suite read the same value from the same reply (one reader, alignment/numbers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tempa.alignment.completions import Completion
from tempa.alignment.prompts import PromptRow
from tempa.alignment.rewards import AnswerReward, RewardSet, ScoreItem, ScoringEnv
from tempa.chat_templates.thinking import PREFILL
from tempa.merge.answers import answer_matches, extract_final_number, final_answer_text, unanswered


def reward(language: str | None, reference: object, reply: str, *, mode: str = "off",
           reasoning: str | None = None) -> float | None:
    """The `answer` reward of one reply, through the reward set the preference and rl stages score with: ``reply`` is
    what the model wrote after the template's pre-fill (``reasoning``: a server that split the think block off)."""
    row = PromptRow(id="p", messages=[{"role": "user", "content": "?"}], language=language, answer=reference,
                    thinking_mode=mode)
    item = ScoreItem(row, Completion(text=reply, prefill=PREFILL[mode], finish_reason="stop", reasoning=reasoning))
    scores = RewardSet([AnswerReward()], ScoringEnv(policy_dir=Path("."), tokenizer_dir=Path("."))).score([item])
    return scores[0]["scores"]["answer"]


def assert_both(language: str | None, reply: str, expected: object, verdict: bool) -> None:
    assert (reward(language, expected, reply) == 1.0) is verdict, f"reward: {reply!r} vs {expected!r}"
    assert answer_matches(reply, expected, language=language) is verdict, f"accuracy: {reply!r} vs {expected!r}"


@pytest.mark.parametrize(("language", "reply", "value"), [
    ("ja", "答えは－５", -5),  # a full-width minus glued to kana: the reward found no number at all
    ("ja", "答えは－５です。", -5),
    ("ja", "合計は－１２．５です。", -12.5),
    ("ja", "答えは−5です", -5),  # the typeset minus sign (U+2212)
    ("en", "The answer is −5", -5),  # math-verify reads no number in "−5", in any language
    ("zh", "所以答案是-3。", -3),
])
def test_a_minus_sign_as_typed_keeps_its_sign_in_both_readers(language, reply, value):
    assert_both(language, reply, value, True)
    assert_both(language, reply, -value, False)
    assert_both(language, reply, str(value), True)  # a reference read from text, as a data file writes it


# (language, reference with a unit or currency, a reply giving it, a reply giving another number)
UNIT_REFERENCES = [
    ("ja", "12,000円", "答えは12000円です。", "答えは13000円です。"),
    ("ja", "１２，０００円", "合計は12,000円です。", "合計は1,200円です。"),
    ("ja", "12 cm", r"\boxed{12}", r"\boxed{13}"),
    ("ja", "3.5キロ", "答えは3.5キロです。", "答えは35キロです。"),
    ("zh", "¥1,200", "答案是1200元。", "答案是1300元。"),
    ("zh", "1200元", "所以答案是 1200", "所以答案是 120"),
    ("zh", "5个", "答案是5个。", "答案是6个。"),
    ("th", "1,250 บาท", "ดังนั้นคำตอบคือ1,250บาท", "ดังนั้นคำตอบคือ1.25บาท"),
    ("th", "61 ผล", "ดังนั้นวีระมีแอปเปิลทั้งหมด 61 ผล", "ดังนั้นวีระมีแอปเปิลทั้งหมด 16 ผล"),
    ("vi", "100.000 đồng", "Đáp án là 100.000 đ.", "Đáp án là 100 đ."),
    ("vi", "100.000đ", "Vậy tổng số tiền là 100000 đồng.", "Vậy tổng số tiền là 10000 đồng."),
    ("vi", "₫100.000", "Đáp án: 100.000₫", "Đáp án: 100₫"),
    ("vi", "2,5 kg", "Vậy đáp án là 2,5 kg.", "Vậy đáp án là 25 kg."),
    ("en", "US$12", "The answer is 12.", "The answer is 21."),
    ("en", "12 km/h", "The answer is 12", "The answer is 1.2"),
    ("en", "-5 °C", "The answer is -5.", "The answer is 5."),
    ("id", "Rp 2.500.000", "Jadi totalnya Rp2.500.000,00.", "Jadi totalnya Rp2.500,00."),
]


@pytest.mark.parametrize(("language", "reference", "right", "wrong"), UNIT_REFERENCES)
def test_a_reference_with_a_unit_is_compared_as_its_number_in_both_readers(language, reference, right, wrong):
    # The accuracy suite compared "12,000円" as text (no reply of 12000 matched it); math-verify read "US$12" as no
    # number at all.
    assert_both(language, right, reference, True)
    assert_both(language, wrong, reference, False)


@pytest.mark.parametrize("reference", ["12 apples", "Tokyo", "cm", "A"])
def test_a_reference_that_is_not_a_number_with_a_unit_stays_text(reference):
    # no unit-like word turns text into a number: the reply must give the text
    assert answer_matches(f"The answer is {reference}.", reference)
    assert not answer_matches("The answer is 12.", reference)


# (language, reply, the value it commits to, a value a misreading gives): Han numerals as Japanese and Chinese replies
# write them. Both readers must give the value and refuse the misreading.
HAN_NUMERALS = [
    ("ja", "答えは四十二です", 42, 2),  # read as no number at all
    ("ja", "答えは1万2千円", 12000, 1),  # read as 1
    ("ja", "答えは１万２千円です。", 12000, 2),
    ("ja", "合計は3億5000万円です。", 350_000_000, 5000),
    ("ja", "答えは12万3456人です。", 123456, 3456),
    ("ja", "全部で三百五個です。", 305, 350),  # Japanese: 三百五 is 305
    ("ja", "答えは二千二十六です。", 2026, 26),
    ("ja", "答えは二〇二六です。", 2026, 6),  # positional, as years are written
    ("ja", "答えは〇です。", 0, 1),
    ("ja", "答えは3分の1です。", "1/3", 1),
    ("ja", "答えはマイナス五です。", -5, 5),
    ("ja", "四十二個です。", 42, 2),  # no lead-in: the last number
    ("ja", "一郎は5個のりんごを持っています。", 5, 1),  # a name is no number where the reply writes digits ...
    ("ja", "九州から来た三菱の社員は7人です。", 7, 3),
    ("ja", "千葉に住む一郎さんは三個持っています。", 3, 1000),  # ... nor where it writes none: 千葉, 一郎 are words
    ("ja", "第一に、答えは五です。", 5, 1),  # an ordinal
    ("ja", "十分に考えた結果、七個です。", 7, 10),  # 十分: enough
    ("ja", "答えは四十二です。検算：40+2=42", 42, 40),  # the committed sentence writes no digits: its numeral
    ("zh", "答案是四十二。", 42, 2),
    ("zh", "所以答案是两千三百。", 2300, 2),
    ("zh", "一共三百五个。", 350, 305),  # spoken Chinese: 三百五 is 350 (三百零五 is 305)
    ("zh", "答案是三百零五。", 305, 350),
    ("zh", "答案是1.5万元。", 15000, 1.5),
    ("zh", "答案是三分之一。", "1/3", 3),
    ("zh", "答案是兩個。", 2, 1),
    ("zh", "答案是负五。", -5, 5),
    ("zh", "这一点十分重要，所以答案是五。", 5, 10),  # 十分: very
    ("zh", "所以答案是一万二。", 12000, 10002),
    ("zh", "答案是三点五。", 3.5, 5),  # a Chinese decimal point: read as 5
    ("zh", "答案是零点二五。", 0.25, 25),
    ("zh", "答案是十二点五米。", 12.5, 5),
    ("zh", "答案是负三点一四。", -3.14, 14),
    ("zh", "他下午三点五分到，一共带了七个。", 7, 3.5),  # 三点五分 is 3:05, no decimal
    ("zh", "三点半出发，答案是五个。", 5, 3.5),
    (None, "答えは四十二です", 42, 2),  # a row without a language: the reply's script says how to read it
    (None, "答案是三百五", 350, 305),
]


@pytest.mark.parametrize(("language", "reply", "value", "misread"), HAN_NUMERALS)
def test_han_numerals_read_the_same_in_the_reward_and_the_accuracy_suite(language, reply, value, misread):
    assert_both(language, reply, value, True)
    assert_both(language, reply, misread, False)


@pytest.mark.parametrize(("reply", "reference"), [
    ("答えは三・五です。", 3.5),  # ・ also lists (一・二年生: first and second years): no decimal point
    ("打率は3割です。", "30%"),  # 割 also divides (6割る2), and a 割 question's reference writes 3
    ("答案是八成。", 0.8),  # 八成 is also "most likely"
    ("答えは三点五です。", 3.5),  # Japanese writes no decimal 点 (三点: three points)
])
def test_han_decimals_and_tenths_that_could_be_words_are_not_read(reply, reference):
    assert_both(None, reply, reference, False)


@pytest.mark.parametrize("language", ["en", "th", "vi"])
def test_han_numerals_are_read_only_in_japanese_and_chinese(language):
    # A row in another language reads no Han character as a number: its reply would be in the wrong language.
    assert_both(language, "答えは四十二です", 42, False)


@pytest.mark.parametrize(("digits", "han"), [
    ("2026年12月2日", "二〇二六年十二月二日"),  # a date commits to its last number, however written
    ("午後3時15分", "午後三時十五分"),
    ("答えは5です。", "答えは五です。"),
])
def test_a_han_numeral_reads_as_its_digits_do(digits, han):
    assert extract_final_number(han, "ja") == extract_final_number(digits, "ja") is not None


@pytest.mark.parametrize("reply", [
    "2026年12月2日", "午後3時15分", "第3章を読んでください", "バージョンはv1.2.3です", "電話は03-1234-5678です",
    "答えは四十二個、つまり42個です。", "一郎は5個、次郎は7個持っています。",
])
def test_a_reply_that_writes_digits_commits_to_the_same_number_as_before(reply):
    # Han numerals add nothing where a reply writes digits: read as a language without Han numerals reads it (Thai
    # writes a decimal point too).
    assert extract_final_number(reply, "ja") == extract_final_number(reply, "th")
    assert extract_final_number(reply, "zh") == extract_final_number(reply, "th")


@pytest.mark.parametrize(("reference", "reply", "verdict"), [
    ("四十二", "答えは42です。", True),  # a reference written in Han numerals is its number
    ("1万2千円", "答えは12000円です。", True),
    ("四十二個", "答えは42個です。", True),
    ("九州", "答えは九州です。", True),  # a word with a numeral in it stays text
    ("九州", "答えは9です。", False),
    ("十分", "答えは10です。", False),  # 十分 (enough) is no 10 minutes
])
def test_a_reference_in_han_numerals(reference, reply, verdict):
    assert_both("ja", reply, reference, verdict)


# (language, reply, the value it commits to, the value a check after it gives): every lead-in tempa knows, each
# followed by a check whose last number (or last '=') is another. The reward gave math-verify the whole reply, which
# took its last number, so a policy was rewarded for a wrong answer followed by a check and punished for the right
# one; where the lead-in was unknown (Korean, Tamil, đáp số, 答：) the accuracy suite took the last number too.
COMMITTED = [
    ("en", "The answer is 3. Check: 3 + 4 = 7", 3, 7),
    ("en", "The answer is 42 apples, 3 more than Bob's 39.", 42, 39),  # the sentence's first number
    ("en", "The answer is 12 - 5 = 7. Check: 7 + 5 = 12.", 7, 12),  # a worked line: its last '='
    ("en", "#### 42\nCheck: 40 + 3 = 43", 42, 43),
    ("en", r"So \boxed{42}. Check: 40 + 3 = 43", 42, 43),
    ("id", "Jawabannya adalah 42 apel. Cek: 40 + 3 = 43", 42, 43),
    ("ms", "Jawapannya ialah 42 biji. Semakan: 40 + 3 = 43", 42, 43),
    ("vi", "Đáp án là 42 quả. Kiểm tra: 40 + 3 = 43", 42, 43),
    ("vi", "Đáp số: 42 quả. Thử lại: 40 + 3 = 43", 42, 43),  # Vietnamese sums end with "đáp số" (the result)
    ("tl", "Ang sagot ay 42. Suriin: 40 + 3 = 43", 42, 43),
    ("th", "ดังนั้นคำตอบคือ 42 ผล\nตรวจสอบ: 40 + 3 = 43", 42, 43),
    ("ta", "விடை: 42. சரிபார்ப்பு: 40 + 3 = 43", 42, 43),
    ("ta", "எனவே பதில் 42 ஆகும். சரிபார்ப்பு: 40 + 3 = 43", 42, 43),
    ("ko", "정답은 42입니다. 검산: 40 + 3 = 43", 42, 43),
    ("ko", "답: 42개. 검산: 40 + 3 = 43", 42, 43),
    ("ja", "答えは四十二です。検算：40+3=43", 42, 43),
    ("ja", "答：42個。検算：40+3=43", 42, 43),
    ("zh", "答案是42。验算：40+3=43", 42, 43),
    ("zh", "答：小明有42个苹果。验算：40+3=43", 42, 43),  # Chinese word problems answer with 答：
    # a check or a reason on the answer's own line: Thai writes no sentence end, and a clause after a comma is no
    # sentence of its own; the committed sentence ran on into it and its '=' gave the check's number
    ("th", "คำตอบคือ 12 ตรวจสอบ: 12+3=15", 12, 15),
    ("th", "ตอบ: 42 ผล ตรวจสอบ 42 - 30 = 12", 42, 12),  # ตอบ: (answer:) as Thai worksheets write it
    ("th", "ดังนั้นคำตอบคือ 3 ผล เพราะ 3 + 4 = 7", 3, 7),
    ("en", "The answer is 12 (check: 12 + 3 = 15)", 12, 15),
    ("en", "The answer is 3, since 3 + 4 = 7.", 3, 7),
    ("en", "The answer is 3 because 3 + 4 = 7.", 3, 7),
    ("id", "Jawabannya adalah 3 karena 3 + 4 = 7.", 3, 7),
    ("ms", "Jawapannya ialah 3 kerana 3 + 4 = 7.", 3, 7),
    ("vi", "Đáp án là 3 vì 3 + 4 = 7.", 3, 7),
    ("tl", "Ang sagot ay 3 dahil 3 + 4 = 7.", 3, 7),
    ("ta", "விடை 3, ஏனெனில் 3 + 4 = 7.", 3, 7),
    ("ko", "정답은 3이고, 검산하면 3 + 4 = 7입니다.", 3, 7),
    ("ja", "答えは3で、検算すると3+4=7です。", 3, 7),
    ("zh", "答案是3，因为3+4=7。", 3, 7),
]


@pytest.mark.parametrize(("language", "reply", "value", "check"), COMMITTED)
def test_both_readers_commit_to_the_answer_not_to_the_check_after_it(language, reply, value, check):
    assert_both(language, reply, value, True)
    assert_both(language, reply, check, False)


# (language, reply, the value it commits to, what its hedged lead-in gives): a lead-in that asks or supposes ("check
# whether the answer is 4", "if the answer is 6", a question) is no commitment; the reply commits to what it states
# after it. The last lead-in won, so both readers took the rejected candidate's check (8, 12) or the candidate.
HEDGED = [
    ("en", "Let's check whether the answer is 4: 4 * 2 = 8, not 10. Try 5: 5 * 2 = 10. So x = 5.", 5, 8),
    ("en", "Suppose the answer is 6. Then 6 + 6 = 12, too many. With 4: 4 + 4 = 8. So there are 4 apples.", 4, 6),
    ("en", "What if the final answer is 7? Then 7 * 3 = 21 > 20. But 6 * 3 = 18, so x = 6.", 6, 7),
    ("en", "So the answer is 4? No: 4 * 2 = 8, not 10.\nTry 5: 5 * 2 = 10, so x = 5", 5, 4),
    ("en", "The answer is 3. Let's verify that the answer is 3: 3 + 4 = 7. Correct.", 3, 7),  # the first commits
    ("id", "Mari kita cek apakah jawabannya adalah 4: 4 × 2 = 8, bukan 10. Coba 5: 5 × 2 = 10. Jadi x = 5.", 5, 8),
    ("id", "Misalkan jawabannya adalah 6, maka 6 + 6 = 12, terlalu banyak. Jadi ada 4 apel.", 4, 12),
    ("ms", "Semak sama ada jawapannya ialah 4: 4 × 2 = 8, bukan 10. Cuba 5: 5 × 2 = 10. Jadi x = 5.", 5, 8),
    ("vi", "Thử xem đáp án là 4 không: 4 × 2 = 8, không phải 10. Thử 5: 5 × 2 = 10. Vậy x = 5.", 5, 8),
    ("vi", "Giả sử đáp án là 6 thì 6 + 6 = 12, quá nhiều. Vậy có 4 quả táo.", 4, 12),
    ("tl", "Kung ang sagot ay 6, 6 + 6 = 12, sobra. Kaya may 4 na mansanas.", 4, 12),
    ("th", "ลองตรวจสอบว่าคำตอบคือ 4 หรือไม่: 4 × 2 = 8 ไม่ใช่ 10\nลอง 5: 5 × 2 = 10\nดังนั้น x = 5", 5, 8),
    ("th", "ถ้าคำตอบคือ 6 จะได้ 6 + 6 = 12 ซึ่งมากเกินไป\nดังนั้นมีแอปเปิล 4 ผล", 4, 12),
    ("ta", "விடை 4 என்றால், 4 × 2 = 8, 10 அல்ல. 5 எனில் 5 × 2 = 10. எனவே x = 5.", 5, 8),
    ("ko", "정답은 4인지 확인해 봅시다: 4 × 2 = 8, 10이 아닙니다. 5를 넣으면 5 × 2 = 10. 따라서 x = 5.", 5, 8),
    ("ko", "정답은 6일까? 6 + 6 = 12로 너무 많습니다. 따라서 사과는 4개입니다.", 4, 12),
    ("ja", "答えは4かどうか確かめます：4×2=8で、10ではありません。5なら5×2=10です。よって x=5。", 5, 8),
    ("ja", "答えは6だとすると、6+6=12で多すぎます。よって、りんごは4個です。", 4, 12),
    ("zh", "检查答案是否为4：4×2=8，不是10。试5：5×2=10。所以x=5。", 5, 8),
    ("zh", "如果答案是6，那么6+6=12，太多了。所以有4个苹果。", 4, 12),
    # ... and a condition that is not about the answer leaves a lead-in committing
    ("en", "If Tom gives away 2, the answer is 5. Check: 5 + 2 = 7.", 5, 7),
    ("ja", "答えは5です。5なら5×2=10で合っています。", 5, 10),
    ("vi", "Nếu cộng lại thì đáp án là 5. Kiểm tra: 5 + 2 = 7.", 5, 7),
    # ... and words that were taken for hedges where they state (a test, "we see", 否定 and 不是 as the answer "no")
    ("en", "The test answer is 5. Check: 5 + 2 = 7", 5, 7),
    ("vi", "Vậy ta xem đáp án là 5. Kiểm tra: 5 + 2 = 7", 5, 7),
    ("en", "The answer is, since 2 + 2 = 4, 4", 4, 2),  # a reason right after the lead-in is no check yet
    # ... while "check whether / let me try" in Vietnamese and English still try a candidate after a stated answer
    ("vi", "Vậy đáp án là 6. Kiểm tra xem đáp án là 5 có đúng không: 5*2=10, sai.", 6, 10),
    ("vi", "Đáp án là 6. Hãy xem đáp án là 5 thì sao: 5*2=10, sai.", 6, 10),
    ("vi", "Đáp án là 6. Để xem đáp án là 5 có hợp lý: 5*2 = 10, không khớp.", 6, 10),
    ("en", "So the answer is 6. Let me try the answer is 5: 5*2=10, wrong.", 6, 10),
    # a question that holds two lead-ins is a question for the first of them too
    ("en", "Hmm, the answer is 4 or the answer is 6? Recheck: 2*3 = 6.", 6, 4),
    ("en", "The answer is 4 if the answer is even? No: 2*3 = 6.", 6, 4),
]


@pytest.mark.parametrize(("reply", "reference"), [
    ("9是质数吗？9 = 3 × 3，所以答案：不是", "不是"),
    ("9能被3整除，所以9是质数吗？答案是否定的", "否定的"),
])
def test_a_chinese_no_is_an_answer_not_a_question(reply, reference):
    """是否 and 是不是 after 答案 ask; 答案是否定的 ("the answer is no") and 答案：不是 ("the answer: no") state."""
    assert answer_matches(reply, reference, language="zh")


@pytest.mark.parametrize("reply", ["答案是下午三点零五分。", "答案是十二点零五分。", "答案是三点一五分。"])
def test_a_chinese_time_with_a_zero_is_no_number(reply):
    """三点零五分 is 3:05: the decimal could not be read (a time), and the reader fell back to 五分 alone, as 5."""
    for reference in (5, 3.05, 12.05, 3.15):
        assert_both("zh", reply, reference, False)


@pytest.mark.timeout(3)  # the hang this guards against: a reading per lead-in, each to the line end (10 s; 0.25 s now)
@pytest.mark.parametrize(("language", "reply"), [("zh", "答案是否为1" * 3400), ("ja", "答えは1かどうか考える、" * 2000),
                                                 ("ko", "정답은 1인지 " * 2500)])
def test_a_reply_of_many_hedged_lead_ins_is_read_in_one_pass(language, reply):
    assert_both(language, reply, 5, False)


@pytest.mark.parametrize(("language", "reply", "value", "misread"), HEDGED)
def test_a_hedged_lead_in_is_no_commitment_in_both_readers(language, reply, value, misread):
    assert_both(language, reply, value, True)
    assert_both(language, reply, misread, False)


# (language, reply, reference, verdict): one percent rule in both readers. A percentage is its number as written
# (a percent question's reference is 45) and, against a number written without %, its hundredth (a probability's
# reference is 0.45 or 9/20). math-verify alone gave 45% = 0.45 but 45% != 45.0; the accuracy suite 45% != 0.45.
PERCENT = [
    ("en", "The answer is 45%.", "45", True),
    ("en", "The answer is 45%.", 0.45, True),
    ("en", "The answer is 45%.", "9/20", True),
    ("en", "The answer is 45%.", r"\frac{9}{20}", True),
    ("en", "The answer is 45%.", "45%", True),
    ("en", "The answer is 45%.", "0.45%", False),  # two percentages: as written
    ("en", "The answer is 45%.", 4.5, False),
    ("en", "The answer is 0.45.", "45%", True),
    ("en", "The answer is 45.0.", "45%", True),
    ("en", "The answer is 4.5.", "45%", False),
    ("en", r"\boxed{45\%}", 0.45, True),
    ("vi", "Đáp án là 45 %.", 0.45, True),  # a space before %, as Vietnamese (and French, Indonesian) write it
    ("ja", "答えは４５％です。", 0.45, True),
    ("zh", "答案是百分之四十五。", 0.45, True),
    ("zh", "答案是百分之四十五。", 45, True),
    # a percent word after the digits is a percent sign: read as 45, which no probability's 0.45 gave
    ("en", "The answer is 45 percent.", 0.45, True),
    ("vi", "Đáp án là 45 phần trăm.", 0.45, True),
    ("id", "Jawabannya adalah 45 persen.", 0.45, True),
    ("ms", "Jawapannya ialah 45 peratus.", 0.45, True),
    ("th", "คำตอบคือ 45 เปอร์เซ็นต์", 0.45, True),
    ("ja", "答えは45パーセントです。", 0.45, True),
    ("ko", "정답은 45퍼센트입니다.", 0.45, True),
    ("ta", "விடை 45 சதவீதம்.", 0.45, True),
    ("vi", "Đáp án là 45 phần trăm.", "45%", True),
    ("vi", "Đáp án là 45 phần trăm.", "0.45%", False),
    ("en", "The answer is 45 percentage points.", 0.45, False),  # a word that is not the percent word
]


@pytest.mark.parametrize(("language", "reply", "reference", "verdict"), PERCENT)
def test_one_percent_rule_in_both_readers(language, reply, reference, verdict):
    assert_both(language, reply, reference, verdict)


def test_math_that_is_not_one_number_is_read_where_the_reply_commits_to_it():
    # math-verify still judges math a number reader cannot (a radical); it reads the committed sentence, not the check
    reply = r"The answer is $\frac{\sqrt{2}}{2}$. Check: $(\frac{\sqrt{2}}{2})^2 = \frac{1}{2}$."
    assert_both("en", reply, r"\frac{\sqrt{2}}{2}", True)
    assert reward("en", r"\frac{1}{2}", reply) == 0.0


# (thinking mode, what the model wrote after the pre-fill): the answer, 42, stands only in the think block.
IN_THE_THINK_BLOCK_ONLY = [
    ("on", "6 x 7 = 42, so the answer is 42.\n</think>\n\nI hope this helps."),
    ("on", "6 x 7 = 42, so the answer is 42.\n</think>\n\n"),  # closed, then nothing
    ("on", "6 x 7 = 42, so the answer is 42."),  # never closed: cut off, or stopped inside the block
    # a block the model opened itself after the template's: its text is reasoning too, closed or not
    ("off", "<think>\n6 x 7 = 42, so the answer is 42."),
    ("on", "6 x 7.\n</think>\n\n<think>\n6 x 7 = 42, so the answer is 42."),
    ("on", "6 x 7.\n</think>\n\n<think>\n6 x 7 = 42, so the answer is 42.\n</think>\n\nI hope this helps."),
]


@pytest.mark.parametrize(("mode", "reply"), IN_THE_THINK_BLOCK_ONLY)
def test_an_answer_only_in_the_think_block_is_wrong_in_both_readers(mode, reply):
    # The reward reads the completion's split (split_think), the accuracy suite the pre-fill and the reply as its
    # backend returns them (final_answer_text): neither reads the reasoning.
    assert reward("en", 42, reply, mode=mode) == 0.0
    assert not answer_matches(final_answer_text(PREFILL[mode] + reply), 42, language="en")
    # ... a server that split the reasoning off leaves the reward nothing else to read
    assert reward("en", 42, reply.split("</think>")[-1] if "</think>" in reply else "", mode=mode,
                  reasoning="6 x 7 = 42, so the answer is 42.") == 0.0
    # the same reasoning with the answer stated after it is right in both
    visible = "6 x 7 = 42.\n</think>\n\nThe answer is 42."
    assert reward("en", 42, visible, mode=mode) == 1.0
    assert answer_matches(final_answer_text(PREFILL[mode] + visible), 42, language="en")


@pytest.mark.parametrize(("mode", "reply"), [
    ("on", "6 x 7 = 42, so the answer"),
    ("off", "<think>\n6 x 7 = 42, so the answer"),
    ("on", "6 x 7.\n</think>\n\n<think>\n6 x 7 = 42, so the answer"),
])
def test_a_reply_cut_off_inside_a_think_block_is_unanswered(mode, reply):
    # the suite counted a reply cut off in a block the model opened after the template's as answered (and graded
    # the reasoning in it)
    assert unanswered([final_answer_text(PREFILL[mode] + reply)]) == 1.0


@pytest.mark.parametrize(("reply", "value", "misread"), [
    # a LaTeX fraction is one number, its sign and decimals inside: read as the two numbers -3 and 4, say
    (r"\boxed{\frac{-3}{4}}", -0.75, 4),
    (r"The answer is $\dfrac{1.5}{2}$.", 0.75, 2),
    # a box holding an expression is its value, not the box's last number (10, 4, 16)
    (r"So \boxed{2^{10}}.", 1024, 10),
    (r"The distance is \boxed{3.5\times10^4} km.", 35000, 4),
    (r"\boxed{\sqrt{16}}", 4, 16),
    # ... and so is an expression a reply commits to outside a box
    (r"The answer is $2^{10}$.", 1024, 10),
    (r"The answer is $\sqrt{16}$.", 4, 16),
    (r"Multiplying out, the total is $2^{10}$.", 1024, 10),  # no lead-in: the reply ends with the expression
])
def test_a_latex_number_or_expression_is_its_value_in_both_readers(reply, value, misread):
    # math-verify read these from the whole reply; the committed number must be the whole fraction or expression
    assert_both("en", reply, value, True)
    assert_both("en", reply, misread, False)


@pytest.mark.timeout(120)  # the hang this guards against: sympy evaluating the tower, for good
def test_a_power_tower_is_no_value():
    """`\\boxed{9^{9^{9^{9}}}}` held the reward (and the accuracy suite) in sympy for good: no timeout covered the
    evaluation. Such a box is no closed value: the reply is read as a number reader reads it."""
    assert reward("en", 5, r"\boxed{9^{9^{9^{9}}}}") == 0.0
    assert not answer_matches(r"\boxed{9^{9^{9^{9}}}}", 5, language="en")


def test_unclosed_boxes_leave_the_closed_ones_read():
    from tempa.alignment.answer_text import boxed_spans

    end = 7 * 2857  # where the first "}" closes the last of the unclosed boxes
    assert boxed_spans("\\boxed{" * 2857 + "} \\boxed{4}") == [(end - 7, end, end), (end + 2, end + 9, end + 10)]


@pytest.mark.parametrize(("reply", "verdict"), [
    (r"The answer is 2\sqrt{3}.", True),
    (r"The answer is 2\sqrt{5}.", False),  # the reward read both sides as their first number, 2, and gave 1.0
    (r"\boxed{2\sqrt{3}}", True),  # the reward gave 0.0 (the reference read as 2)
])
def test_a_reference_written_as_bare_latex_is_read_whole_in_both_readers(reply, verdict):
    assert_both("en", reply, r"2\sqrt{3}", verdict)


@pytest.mark.parametrize(("language", "reply", "expected", "verdict"), [
    ("th", "คำตอบคือ 1,000", "๑,๐๐๐", True),  # a Thai reference with a thousands comma read as 1 (Thai trial)
    ("th", "คำตอบคือ 1", "๑,๐๐๐", False),  # ... so that "1" matched it
    ("th", "คำตอบคือ ๘,๗๔๑", "8741", True),  # a Thai reply with a thousands comma read as 8.741
    ("th", "คำตอบคือ ๑,๒๕๐,๐๐๐ บาท", 1250000, True),
    ("th", "คำตอบคือ ๘๗๔๑", 8741, True),  # without a comma it read right already
    ("th", "คำตอบคือ ๓.๕", "3.5", True),
    ("hi", "उत्तर है १,२३४", 1234, True),  # Devanagari digits, and every other script's, the same way
    ("en", "The answer is ١,٢٣٤", 1234, True),  # Arabic-Indic digits
])
def test_digits_of_other_scripts_are_read_as_their_numbers(language, reply, expected, verdict):
    assert_both(language, reply, expected, verdict)
