"""Replies from a Korean, Japanese, Chinese, Tagalog, Tamil and Burmese evaluation team's trial of the answer reward
(``match: auto``) and the accuracy suite: each reply is checked against every option of its question by both graders,
so a reply that scores for two options (or for a wrong one) is caught, and the two are held to one verdict."""

from __future__ import annotations

import pytest
from test_answer_reward_hacks import EN_COUNT, LATIN, THAI, expected, verdicts

CIRCLED = ("①", "②", "③", "④")

# (reply, the question's options, the one option it gives or None, language)
CIRCLED_LABELS = [
    # a circled label is the number it circles: ③ scored nothing, even as the reply's whole answer
    ("③", CIRCLED, "③", "ko"),
    ("정답은 ③입니다.", CIRCLED, "③", "ko"),
    ("정답: ③", CIRCLED, "③", "ko"),
    ("\\boxed{③}", CIRCLED, "③", "ko"),
    ("③이 정답입니다.", CIRCLED, "③", "ko"),
    ("③번이 정답입니다.", CIRCLED, "③", "ko"),
    ("정답은 ③번입니다.", CIRCLED, "③", "ko"),
    ("正解は①です。", CIRCLED, "①", "ja"),
    ("정답은 ②가 아니라 ④입니다.", CIRCLED, "④", "ko"),
    ("오답은 ③입니다. 정답은 ②입니다.", CIRCLED, "②", "ko"),
    # ... and the option's number gives it, as ③ gives the option's number
    ("정답은 3번입니다.", CIRCLED, "③", "ko"),
    ("정답은 ③입니다.", ("1", "2", "3", "4"), "3", "ko"),
    # a list of the labels, a choice, a wrong answer named, or every option stated in turn is none
    ("① 서울\n② 부산\n③ 대구\n④ 인천", CIRCLED, None, "ko"),
    ("정답: ①②③④", CIRCLED, None, "ko"),
    ("①, ②, ③, ④", CIRCLED, None, "ko"),
    ("정답은 ③ 또는 ④입니다.", CIRCLED, None, "ko"),
    ("오답은 ③입니다.", CIRCLED, None, "ko"),
    ("정답은 ①입니다. 정답은 ②입니다. 정답은 ③입니다. 정답은 ④입니다.", CIRCLED, None, "ko"),
    ("The answer is A. The answer is B. The answer is C. The answer is D.", LATIN, None, "en"),
    ("The answer is 12. The answer is 13.", ("12", "13"), None, "en"),
    ("The wrong answer is 12.", ("12", "13"), None, "en"),
    # ... while a correction, or the same answer stated again, keeps its answer
    ("The answer is A. Wait, the answer is B.", LATIN, "B", "en"),
    ("The answer is 12. So the answer is 12 apples.", ("12", "13"), "12", "en"),
]



RESTATED_BY_VALUE = [
    # an answer stated again after another lead-in, in another form of the same value, keeps it (each gave none: the
    # two lead-ins' sentences were compared as text)
    ("The answer is $18.\n#### 18", ("18", "13", "8"), "18", "en"),
    ("The answer is 18 dollars.\n#### $18", ("18", "13", "8"), "18", "en"),
    ("The answer is 5 + 7 = 12.\n#### 12", ("12", "5", "7"), "12", "en"),
    ("The answer is $1,250.\n#### 1250", ("1250", "1.25", "250"), "1250", "en"),
    ("The answer is 12.\nAnswer: 12.0", ("12", "13"), "12", "en"),
    ("The answer is 1/2. So the answer is 0.5.", ("0.5", "1", "2"), "0.5", "en"),
    ("The answer is 45%. So the answer is 45.", ("45", "4.5", "0.045"), "45", "en"),
    ("The answer is \\frac{2}{3}. The answer is 2/3.", ("2/3", "2", "3"), "2/3", "en"),
    ("정답은 ③입니다. 정답은 3입니다.", ("1", "2", "3", "4"), "3", "ko"),
    ("정답은 ③입니다. 정답은 3입니다.", CIRCLED, "③", "ko"),
    ("Jawabannya adalah Rp12.000.\nJawabannya 12000.", ("12000", "12"), "12000", "id"),
    ("Đáp án là 1.250 đồng. Đáp án: 1250", ("1250", "1.25"), "1250", "vi"),
    ("Answer: 3 × 4 = 12. The answer is 12.", ("12", "3", "4"), "12", "en"),
    # ... and a lead-in that commits to nothing before is no answer stated
    ("Answer: Let me think. The answer is B.", LATIN, "B", "en"),
    ("Answer: Let me think. The answer is 12.", ("12", "13"), "12", "en"),
    # ... while two lead-ins that commit to different answers give none, by value too
    ("The answer is A. The answer is B.", LATIN, None, "en"),
    ("정답은 ①입니다. 정답은 ②입니다.", CIRCLED, None, "ko"),
    ("The answer is 12. The answer is 13.", ("12", "13"), None, "en"),
    ("The answer is 1/2. So the answer is 0.4.", ("0.5", "0.4"), None, "en"),
    ("The answer is B. The answer is 12.", ("A", "B", "12"), None, "en"),
    ("The answer is A. Wait, the answer is B.", LATIN, "B", "en"),
]




NUMBER_DENIALS = [
    # a number is denied by the words that deny a label (정답은 B가 아닙니다 gave none; 정답은 12개가 아닙니다 gave 12)
    ("정답은 12개가 아닙니다.", EN_COUNT, None, "ko"),
    ("12개는 아닙니다.", EN_COUNT, None, "ko"),
    ("정답이 12는 아닙니다.", EN_COUNT, None, "ko"),
    ("「12」가 아닙니다.", EN_COUNT, None, "ko"),
    ("정답은 12가 아닌 것 같습니다.", EN_COUNT, None, "ko"),
    ("答えは12は間違いです。", EN_COUNT, None, "ja"),
    ("答えは「12」じゃない。", EN_COUNT, None, "ja"),
    ("The answer: 12 is not correct.", EN_COUNT, None, "en"),
    ("答案：12不是。", EN_COUNT, None, "zh"),
    ("정답은 B가 아닙니다.", LATIN, None, "ko"),
    # ... while a stated number, and "not X but Y", keep theirs
    ("정답은 12개입니다.", EN_COUNT, "12", "ko"),
    ("정답은 12가 아니라 13입니다.", EN_COUNT, "13", "ko"),
    ("정답은 13개이고, 12개가 아닙니다.", EN_COUNT, "13", "ko"),
    ("答えは13個で、12個ではありません。", EN_COUNT, "13", "ja"),
]



NUMBERS = ("12", "13", "14")
HANGUL = ("가", "나", "다", "라")

LISTED_CANDIDATES = [
    # a list of candidates, "or" between two numbers, two labels, another answer "also correct": none (each gave its
    # first)
    ("정답은 12, 13, 14 중 하나입니다.", NUMBERS, None, "ko"),
    ("答えは12、13、14のどれかです。", NUMBERS, None, "ja"),
    ("答案是12、13、14中的一个。", NUMBERS, None, "zh"),
    ("The answer is one of 12, 13, 14.", NUMBERS, None, "en"),
    ("정답은 12나 13입니다.", NUMBERS, None, "ko"),
    ("정답은 12개나 13개입니다.", NUMBERS, None, "ko"),
    ("정답은 B, C입니다.", LATIN, None, "ko"),
    ("정답은 나, 다입니다.", HANGUL, None, "ko"),
    ("정답은 2, 3번입니다.", ("1", "2", "3", "4"), None, "ko"),
    ("B가 정답입니다. C도 정답입니다.", LATIN, None, "ko"),
    ("B가 정답입니다. C도 맞습니다.", LATIN, None, "ko"),
    ("B是正确答案。C也是正确答案。", LATIN, None, "zh"),
    ("答えはBです。Cも正解です。", LATIN, None, "ja"),
    # ... while 나 as a label or "as many as", one number with its thousands comma, and an option's text keep theirs
    ("정답은 나입니다.", HANGUL, "나", "ko"),
    ("사과를 12개나 먹었습니다. 정답은 13입니다.", NUMBERS, "13", "ko"),
    ("The answer is 1,234.", ("1234", "234", "1"), "1234", "en"),
    ("정답은 B, 파리입니다.", LATIN, "B", "ko"),
    ("B가 정답입니다. B도 맞습니다.", LATIN, "B", "ko"),
]



TUPLES = ("(3, 4)", "(4, 3)", "3", "4")
LISTS_AS_ONE_ANSWER = [
    # a tuple, an interval or a list that is the answer is compared whole with a math reference (each gave none: its
    # numbers read as listed candidates), and gives no one of its numbers
    ("The answer is (3, 4).", TUPLES, "(3, 4)", "en"),
    ("The answer is [2, 5].", ("[2, 5]", "(2, 5)", "2", "5"), "[2, 5]", "en"),
    ("The answer is 2, 3, 5.", ("2, 3, 5", "2, 3", "2", "3", "5"), "2, 3, 5", "en"),
    ("The three smallest primes are 2, 3, and 5. The answer is 2, 3, 5.", ("2, 3, 5", "2", "5"), "2, 3, 5", "en"),
    ("The solutions are x = 2 and x = 3, so the answer is (2, 3).", ("(2, 3)", "(3, 2)", "2", "3"), "(2, 3)", "en"),
    # ... a number after the comma that starts a clause of its own is no second item
    ("The answer is 12, 13 would exceed the limit.", NUMBERS, "12", "en"),
    # ... while numbers listed as candidates still give none of them
    ("The answer is 12, 13 or 14.", NUMBERS, None, "en"),
    ("The answer is 12, 13 apples.", NUMBERS, None, "en"),
    ("The answer is 12, 13 and 14.", NUMBERS, None, "en"),
]



BURMESE = ("က", "ခ", "ဂ", "ဃ")

TAGALOG_TAMIL_BURMESE = [
    # denials, "or"/"and", questions and corrections in Tamil, Filipino and Burmese (each gave the denied, first or
    # asked answer, or not the corrected one)
    ("விடை B அல்ல, C.", LATIN, "C", "ta"),
    ("விடை B அல்ல.", LATIN, None, "ta"),
    ("விடை 12 அல்லது 13.", EN_COUNT, None, "ta"),
    ("விடை B அல்லது C.", LATIN, None, "ta"),
    ("விடை B மற்றும் C.", LATIN, None, "ta"),
    ("விடை 12 அல்ல.", EN_COUNT, None, "ta"),
    ("விடை 12 இல்லை.", EN_COUNT, None, "ta"),
    ("விடை 12 அல்ல, 13.", EN_COUNT, "13", "ta"),
    ("Ang sagot ay B at C.", LATIN, None, "tl"),
    ("Ang sagot ay 12 o 13.", EN_COUNT, None, "tl"),
    ("Ang sagot ay 12 at 13.", EN_COUNT, None, "tl"),
    ("12 o 13", EN_COUNT, None, "tl"),
    ("12 ba ang sagot", EN_COUNT, None, "tl"),
    ("Ang sagot ba ay 12", EN_COUNT, None, "tl"),
    ("Ang sagot ay 12 ba", EN_COUNT, None, "tl"),
    ("Ang sagot ay 12. Ay mali, 15 pala.", ("12", "15"), "15", "tl"),
    ("Ang sagot ay B. Mali, C pala.", LATIN, "C", "tl"),
    ("Hindi B, kundi C", LATIN, "C", "tl"),
    ("Hindi 12, kundi 13.", EN_COUNT, "13", "tl"),
    ("အဖြေမှာ ၁၂ မဟုတ်ပါ။", EN_COUNT, None, "my"),
    ("အဖြေမှာ ၁၂ လား။", EN_COUNT, None, "my"),
    ("အဖြေမှာ (ခ) ဖြစ်သည်။", BURMESE, "ခ", "my"),
    ("အဖြေမှာ B ဖြစ်သည်။", LATIN, "B", "my"),
    ("အဖြေမှာ ၁၂ ဖြစ်သည်။", EN_COUNT, "12", "my"),
    # ... while the short words elsewhere are no choice, question or correction
    ("The answer is 12 at 5% interest.", EN_COUNT, "12", "en"),
    ("The answer is 12 at most.", EN_COUNT, "12", "en"),
    ("Đáp án là 12 ba lô.", EN_COUNT, "12", "vi"),
    ("Ang sagot ay 12. Mali ang 13.", EN_COUNT, "12", "tl"),
    ("Ang sagot ay C. Mali ang B.", LATIN, "C", "tl"),
    ("விடை 13.", EN_COUNT, "13", "ta"),
]



TAGALOG_WORDS_ELSEWHERE = [
    # Filipino at ("and") and a bare mali ("wrong") read only in a Tagalog reply (the prompt's language tl, or a
    # Tagalog lead-in without one): elsewhere at is a preposition (each gave none, or the option mali named wrong)
    ("The answer is B at 12.", LATIN, "B", "en"),
    ("The answer is B at 12.", LATIN, "B", None),
    ("Đáp án là 12 at 13.", EN_COUNT, "12", "vi"),
    ("The minimum value is -1 at 2.", ("-1", "2", "1"), "-1", "en"),
    ("The maximum height is 45 at 3.", ("45", "3"), "45", "en"),
    ("Ang sagot ay B. Mali C.", LATIN, "B", "tl"),
    # ... while in Tagalog at and o still name a second answer, and mali before a comma still corrects
    ("Ang sagot ay B at C.", LATIN, None, None),
    ("Ang sagot ay 12 at 13.", EN_COUNT, None, None),
    ("May 12 at 13.", EN_COUNT, None, "tl"),
    ("Jawabannya 5 o 6.", ("5", "6"), None, "id"),
    ("Ang sagot ay 12. Mali, 13.", EN_COUNT, "13", "tl"),
]



CHINESE_TURNS = [
    # "not B, (it) is C", corrections after the answer, and the lead-in 答案应该是 (each gave none or the first)
    ("不是B，是C", LATIN, "C", "zh"),
    ("答案不是B，是C。", LATIN, "C", "zh"),
    ("不是12，是13。", ("12", "13", "15"), "13", "zh"),
    ("答案是12。哦不，是15。", ("12", "13", "15"), "15", "zh"),
    ("答案是12。错了，应该是15。", ("12", "13", "15"), "15", "zh"),
    ("答案是B。错了，应该是C。", LATIN, "C", "zh"),
    ("正确答案应该是C。", LATIN, "C", "zh"),
    ("答案应该是15。", ("12", "13", "15"), "15", "zh"),
    # ... while ，是 before the 不是, or another option called wrong after the answer, keeps it
    ("答案是B，不是C。", LATIN, "B", "zh"),
    ("答案是C。A错了。", LATIN, "C", "zh"),
]



NOT_BEFORE_ANOTHER = [
    # 不是, không phải and ไม่ใช่ before another candidate deny it, not the answer before them, as "12, not 13" and
    # "12, bukan 13" do (each gave none for a number)
    ("答案是12，不是13。", EN_COUNT, "12", "zh"),
    ("答案是12个，不是13个。", EN_COUNT, "12", "zh"),
    ("Đáp án là 12, không phải 13.", EN_COUNT, "12", "vi"),
    ("คำตอบคือ 12 ไม่ใช่ 13", EN_COUNT, "12", "th"),
    ("คำตอบคือ ข ไม่ใช่ ค", THAI, "ข", "th"),
    ("Đáp án là B, không phải C.", LATIN, "B", "vi"),
    # ... and sai is "wrong" alone, not the first syllable of sai số (error margin) or sai lệch (deviation)
    ("Đáp án là 12, sai số không đáng kể.", EN_COUNT, "12", "vi"),
    ("Đáp án là 12, sai lệch nhỏ.", EN_COUNT, "12", "vi"),
    # ... while one that ends the sentence, or goes on to a word, still denies the answer before it
    ("答案是12，不是。", EN_COUNT, None, "zh"),
    ("答案是12，不是正确的。", EN_COUNT, None, "zh"),
    ("คำตอบคือ 12 ไม่ใช่", EN_COUNT, None, "th"),
    ("Đáp án là 12 sai.", EN_COUNT, None, "vi"),
    ("Đáp án là 12, sai rồi.", EN_COUNT, None, "vi"),
    ("「B」不是正确答案。", LATIN, None, "zh"),
]



HANGUL_WITH_SEA = ("가", "나", "다", "라", "마", "바", "바다")

KOREAN_PLAIN_COPULA = [
    # the plain copula 다 after a Hangul label (정답은 나다 gave nothing)
    ("정답은 나다.", HANGUL_WITH_SEA, "나", "ko"),
    ("정답은 가다.", HANGUL_WITH_SEA, "가", "ko"),
    # ... while the label 다 alone is 다, and a word ending in 다 is the word
    ("정답은 다.", HANGUL_WITH_SEA, "다", "ko"),
    ("정답은 바다.", HANGUL_WITH_SEA, "바다", "ko"),
]


# each table by what it shows, as the test's id says
TABLES = {
    "a_circled_label_is_its_number": CIRCLED_LABELS,
    "an_answer_restated_in_another_form_keeps_it": RESTATED_BY_VALUE,
    "a_number_is_denied_as_a_label_is": NUMBER_DENIALS,
    "listed_candidates_commit_to_none": LISTED_CANDIDATES,
    "a_tuple_or_list_answer_is_compared_whole": LISTS_AS_ONE_ANSWER,
    "tagalog_tamil_and_burmese_denials_choices_questions_and_corrections": TAGALOG_TAMIL_BURMESE,
    "tagalog_words_read_only_in_tagalog": TAGALOG_WORDS_ELSEWHERE,
    "chinese_turns_corrections_and_lead_ins": CHINESE_TURNS,
    "not_before_another_candidate_denies_that_one": NOT_BEFORE_ANOTHER,
    "a_korean_plain_copula_after_a_label": KOREAN_PLAIN_COPULA,
}


@pytest.mark.parametrize(("reply", "options", "right", "language"), [
    pytest.param(*case, id=f"{shows}-{i}") for shows, table in TABLES.items() for i, case in enumerate(table)])
def test_each_reply_gives_its_one_option_or_none(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)
