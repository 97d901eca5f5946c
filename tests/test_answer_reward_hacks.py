"""Replies a policy could learn to game the answer reward with, from a Japanese RL team's trial: each reply is
checked against every option of its question, by the answer reward's ``auto`` and by the accuracy suite, so a reply
that scores for two options (or for a wrong one) is caught, and the two graders are held to one verdict."""

from __future__ import annotations

import pytest

from tempa.alignment.rewards import answer_match
from tempa.merge.answers import answer_matches

TIME = ("2時間30分", "5時間30分", "30分")  # 30分 is a number with a unit: 30 gives it
DATE = ("4月1日", "5月1日")
CLASS = ("1年2組", "3年2組")
HOUR = ("午前3時", "午後3時")
PAIR = ("x=2, y=3", "x=3, y=2", "x=3")
AND = ("2と3", "5と3")
KANA = ("ア", "イ", "ウ", "エ")
LATIN = ("A", "B", "C", "D")
SENTIMENT = ("ネガティブ", "ポジティブ", "どちらとも言えない")
YES_NO = ("Yes", "No")
COUNT = ("12個", "10個", "13個")
EN_COUNT = ("12", "13")

# (reply, the question's options, the one option it gives or None, language)
PROSE_WITH_NUMBERS = [
    # a text reference with digits in it is text: math-verify read its last number, so 30 gave 2時間30分
    ("答えは5時間30分です。", TIME, "5時間30分", "ja"),
    ("答えは30分です。", TIME, "30分", "ja"),
    ("30", TIME, "30分", "ja"),
    ("答えは2時間30分です。", TIME, "2時間30分", "ja"),
    ("答えは5月1日です。", DATE, "5月1日", "ja"),
    ("答えは4月1日です。", DATE, "4月1日", "ja"),
    ("答えは3年2組です。", CLASS, "3年2組", "ja"),
    ("答えは午後3時です。", HOUR, "午後3時", "ja"),
    ("答えは午前3時です。", HOUR, "午前3時", "ja"),
    ("答えは5", ("縦4cm横5cm",), None, "ja"),
    ("答えは5と3です", AND, "5と3", "ja"),
    # math is read whole: x=3 gives neither pair, a tuple written without its space is the tuple
    ("答えはx=3です", PAIR, "x=3", "ja"),
    ("答えはx=2, y=3です", PAIR, "x=2, y=3", "ja"),
    ("答えは(2,3)です", ("(2, 3)", "(3, 2)"), "(2, 3)", "ja"),
]


def verdicts(reply: str, options: tuple[str, ...], language: str) -> dict[str, tuple[float | None, bool]]:
    return {gold: (answer_match(reply, gold, "auto", None, language), answer_matches(reply, gold, language=language))
            for gold in options}


def expected(options: tuple[str, ...], right: str | None) -> dict[str, tuple[float, bool]]:
    return {gold: (float(gold == right), gold == right) for gold in options}


@pytest.mark.parametrize(("reply", "options", "right", "language"), PROSE_WITH_NUMBERS)
def test_prose_with_numbers_is_graded_as_text_and_math_whole(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


ONE_COMMITMENT = [
    # several boxes, or a lead-in and a different last line: one answer per reply (the last box, else the last
    # lead-in's sentence, else the last line), never one for every option
    (r"\boxed{ア}\boxed{イ}\boxed{ウ}\boxed{エ}", KANA, "エ", "ja"),
    (r"\boxed{A}, or maybe \boxed{B}", LATIN, "B", "en"),
    (r"\boxed{A, B}", LATIN, None, "en"),
    ("答え：ポジティブ\nネガティブ", SENTIMENT, "ポジティブ", "ja"),
    ("答えはア\nイ", KANA, "ア", "ja"),
    # the lead-in's sentence is the commitment, unless a retraction takes it back: then its correction is
    ("答えはイです。いや、間違えました。ウです。", KANA, "ウ", "ja"),
    ("答えはイです。ウも考えましたが違います。", KANA, "イ", "ja"),
    ("答えはアかイです。", KANA, None, "ja"),
    ("The answer is A or B.", LATIN, None, "en"),
    ("答えはア、イ、ウ、エ", KANA, None, "ja"),
    # an option's label before its text is the pick (the hardened rule read only what follows the colon, and
    # "C: Paris" gave no letter); two labels name the second
    ("C: Paris", LATIN, "C", "en"),
    ("ウ：東京", KANA, "ウ", "ja"),
    ("ア：イ", KANA, "イ", "ja"),
]

LISTS_AND_RETRACTIONS = [
    # a list of options names no answer; a first guess taken back is not the answer, the correction is
    ("ア、イ、ウ、エ", KANA, None, "ja"),
    ("A, B, C, or D", LATIN, None, "en"),
    ("A, B", LATIN, None, "en"),
    ("ネガティブ、ポジティブ、どちらとも言えない", SENTIMENT, None, "ja"),
    ("イ。いや、ウです。", KANA, "ウ", "ja"),
    ("ネガティブ。いいえ、実はポジティブです。", SENTIMENT, "ポジティブ", "ja"),
    # without a copula too: the guess it takes back scored
    ("イ。いや、ウ。", KANA, "ウ", "ja"),
    ("ネガティブ。いいえ、実はポジティブ。", SENTIMENT, "ポジティブ", "ja"),
    ("イ。いや、違うかも。", KANA, None, "ja"),
    ("いいえ、そうではありません。", ("はい", "いいえ"), "いいえ", "ja"),
    ("Yes, no.", YES_NO, None, "en"),
    ("ア：イ", KANA, "イ", "ja"),
    # what the opening rule is for keeps passing
    ("C) Paris", LATIN, "C", "en"),
    ("(C) Paris", LATIN, "C", "en"),
    ("Yes, it is.", YES_NO, "Yes", "en"),
    ("B. Because the second sentence is negative.", LATIN, "B", "en"),
    ("Ｂ、理由は否定的な語が多いからです。", LATIN, "B", "ja"),
    ("ウです。", KANA, "ウ", "ja"),
]

QUESTIONS = [
    # a question states nothing, with or without a copula
    ("ネガティブ？", SENTIMENT, None, "ja"),
    ("感情：ネガティブ？", SENTIMENT, None, "ja"),
    ("ネガティブ…かな？", SENTIMENT, None, "ja"),
    ("Yes?", YES_NO, None, "en"),
    ("感情：ネガティブ", SENTIMENT, "ネガティブ", "ja"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), ONE_COMMITMENT)
def test_a_reply_commits_to_one_answer(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


@pytest.mark.parametrize(("reply", "options", "right", "language"), LISTS_AND_RETRACTIONS)
def test_a_list_or_a_retracted_guess_is_not_the_answer(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


@pytest.mark.parametrize(("reply", "options", "right", "language"), QUESTIONS)
def test_a_question_is_no_answer(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


DENIALS_QUESTIONS_CHOICES = [
    # a number denied, asked about or offered as one of two is not committed to; "not X but Y" commits to Y
    ("答えは12個ではありません。", COUNT, None, "ja"),
    ("12個ではありません。", COUNT, None, "ja"),
    ("１２個ですか？", COUNT, None, "ja"),
    ("答えは12個ですか？", COUNT, None, "ja"),
    ("答えは１２個ではなく１０個です。", COUNT, "10個", "ja"),
    ("答えは１０個ではなく１２個です。", COUNT, "12個", "ja"),
    ("答えは五十六ではなく六十五です。", ("56", "65"), "65", "ja"),
    ("答えは9個か10個です。", ("９", "10"), None, "ja"),
    ("The answer is not 12.", EN_COUNT, None, "en"),
    ("Is it 12?", EN_COUNT, None, "en"),
    ("The answer is 12 or 13.", EN_COUNT, None, "en"),
    ("It is 12 or 13.", EN_COUNT, None, "en"),
    ("The answer is not 12 but 13.", EN_COUNT, "13", "en"),
    # stated numbers keep passing
    ("答えは12個です。", COUNT, "12個", "ja"),
    ("The answer is 13, not 12.", EN_COUNT, "13", "en"),
    ("3 + 9 = 12", EN_COUNT, "12", "en"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), DENIALS_QUESTIONS_CHOICES)
def test_a_denied_asked_or_offered_number_is_not_the_answer(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


KO_SENTIMENT = ("긍정", "부정")
THREE_WAY = ("ポジティブ", "ネガティブ", "中立")

TEXT_DENIALS_AND_WRONG_ANSWERS = [
    # a quoted or opening answer followed by its denial is denied; "not X but Y" commits to Y, as the numeric rule
    ("「ネガティブ」ではなく「ポジティブ」です。", SENTIMENT, "ポジティブ", "ja"),
    ("「ネガティブ」ではありません。", SENTIMENT, None, "ja"),
    ("答えは「ネガティブ」ではありません。", SENTIMENT, None, "ja"),
    ("「ネガティブ」は間違いです。", SENTIMENT, None, "ja"),
    ("ネガティブではなく、ポジティブです。", SENTIMENT, "ポジティブ", "ja"),
    ("「긍정」이 아니라 「부정」입니다.", KO_SENTIMENT, "부정", "ja"),
    ("「긍정」이 아니라 「부정」입니다.", KO_SENTIMENT, "부정", "ko"),
    ("「긍정」이 아닙니다.", KO_SENTIMENT, None, "ko"),
    ("(C) is not correct", LATIN, None, "en"),
    ("Not B, but C.", LATIN, "C", "en"),
    # a topic, lead-in or label that names a wrong answer (不正解, 오답, wrong answer) does not commit to what it names
    ("正解はネガティブで、不正解はポジティブです。", SENTIMENT, "ネガティブ", "ja"),
    ("不正解はポジティブです。", SENTIMENT, None, "ja"),
    ("정답은 부정이고 오답은 긍정입니다.", KO_SENTIMENT, "부정", "ja"),
    ("정답은 부정이고 오답은 긍정입니다.", KO_SENTIMENT, "부정", "ko"),
    ("오답은 긍정입니다.", KO_SENTIMENT, None, "ko"),
    ("The wrong answer is B.", LATIN, None, "en"),
    ("Wrong answer: B", LATIN, None, "en"),
    ("The wrong answer is 12. The answer is 13.", EN_COUNT, "13", "en"),
    # "or" (내지는, 내지, ないしは) names two, neither the answer
    ("긍정 내지는 부정입니다.", KO_SENTIMENT, None, "ja"),
    ("긍정 내지 부정입니다.", KO_SENTIMENT, None, "ko"),
    ("정답은 긍정 내지는 부정입니다.", KO_SENTIMENT, None, "ko"),
    ("ポジティブないしはネガティブです。", SENTIMENT, None, "ja"),
    # a joined clause without a topic of its own names a second answer
    ("答えはアで、イでもある", KANA, None, "ja"),
    # right answers keep passing
    ("ポジティブです。", SENTIMENT, "ポジティブ", "ja"),
    ("この文はネガティブです。", SENTIMENT, "ネガティブ", "ja"),
    ("答えは「ポジティブ」です。", SENTIMENT, "ポジティブ", "ja"),
    ("答えはネガティブで、理由は否定語が多いからです。", SENTIMENT, "ネガティブ", "ja"),
    ("The answer is (C) Paris", LATIN, "C", "en"),
    ("C) Paris", LATIN, "C", "en"),
    ("C) Not enough information", LATIN, "C", "en"),
    ("Sentiment: Positive", ("Positive", "Negative"), "Positive", "en"),
    ("The capital of France is Paris.", ("Paris", "London"), "Paris", "en"),
    ("ポジティブ、ネガティブ、中立の3択で、答えは中立です。", THREE_WAY, "中立", "ja"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), TEXT_DENIALS_AND_WRONG_ANSWERS)
def test_a_denied_or_wrong_answer_text_is_not_the_answer(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


KANA_SENTIMENT = ("ポジティブ", "ネガティブ", "中立", "ア", "イ", "ウ", "エ")

HEDGED_AND_THOUGHT_STATEMENTS = [
    # how models state a Japanese answer: "I think it is X", a conjecture, a guessing or concluding adverb, a topic
    # without a copula, a described noun, a conceded clause; each scored 0
    ("ネガティブだと思います。", KANA_SENTIMENT, "ネガティブ", "ja"),
    ("ネガティブだと考えます。", KANA_SENTIMENT, "ネガティブ", "ja"),
    ("ネガティブでしょう。", KANA_SENTIMENT, "ネガティブ", "ja"),
    ("たぶんネガティブです。", KANA_SENTIMENT, "ネガティブ", "ja"),
    ("おそらくネガティブだ。", KANA_SENTIMENT, "ネガティブ", "ja"),
    ("この文はネガティブ。", KANA_SENTIMENT, "ネガティブ", "ja"),
    ("したがってネガティブです。", KANA_SENTIMENT, "ネガティブ", "ja"),
    ("ネガティブな感情です。", KANA_SENTIMENT, "ネガティブ", "ja"),
    ("ネガティブな面もあるが、全体としてはポジティブです。", KANA_SENTIMENT, "ポジティブ", "ja"),
    ("したがってアです。", KANA_SENTIMENT, "ア", "ja"),
    ("イだと思います。", KANA_SENTIMENT, "イ", "ja"),
    # "not X but Y" keeps giving Y
    ("この文はポジティブではなく、ネガティブです。", KANA_SENTIMENT, "ネガティブ", "ja"),
    ("アではなくイです。", KANA_SENTIMENT, "イ", "ja"),
    # a thought denied, a denial thought, two answers, a question, another word: no answer
    ("ネガティブだとは思いません。", KANA_SENTIMENT, None, "ja"),
    ("ネガティブではないと思います。", KANA_SENTIMENT, None, "ja"),
    ("ネガティブかもしれないし、ポジティブかもしれません。", KANA_SENTIMENT, None, "ja"),
    ("ネガティブでしょうか？", KANA_SENTIMENT, None, "ja"),
    ("ネガティブでしょうか。", KANA_SENTIMENT, None, "ja"),
    ("ネガティブとポジティブだと思います。", KANA_SENTIMENT, None, "ja"),
    ("ネガティブかポジティブだと思います。", KANA_SENTIMENT, None, "ja"),
    ("たぶんアかイでしょう。", KANA_SENTIMENT, None, "ja"),
    ("超ネガティブだと思います。", KANA_SENTIMENT, None, "ja"),
    ("ネガティブではないでしょう。", KANA_SENTIMENT, None, "ja"),
    ("ネガティブな感情ではないです。", KANA_SENTIMENT, None, "ja"),
    ("この文はネガティブではない。", KANA_SENTIMENT, None, "ja"),
    ("この文はネガティブかポジティブ。", KANA_SENTIMENT, None, "ja"),
    ("不正解はポジティブだと思います。", KANA_SENTIMENT, None, "ja"),
    ("不正解はたぶんポジティブです。", KANA_SENTIMENT, None, "ja"),
    ("不正解は、ネガティブ。", KANA_SENTIMENT, None, "ja"),
    ("ポジティブだが、ネガティブです。", KANA_SENTIMENT, None, "ja"),
    ("ネガティブだが、不正解はポジティブです。", KANA_SENTIMENT, None, "ja"),
    # without a copula a topic commits only in a line of one sentence: the answer before a reason stays the answer
    ("ネガティブ。理由は否定語が多いから。", KANA_SENTIMENT, "ネガティブ", "ja"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), HEDGED_AND_THOUGHT_STATEMENTS)
def test_a_thought_or_guessed_statement_gives_its_answer(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


SOUTHERN_COUNT = ("3", "4")
NATIONS = ("5", "6")
MONTHS = ("12か月", "6か月")
TUPLES = ("(2, 3)", "(3, 2)")
INTERVALS = ("(0, 1)", "(1, 2)")

REVIEWED_REGRESSIONS = [
    # a number before the counter か (12か月, 3か所, 5か国) is a count, not "or"; "42 or so" approximates
    ("答えは12か月です。", EN_COUNT, "12", "ja"),
    ("12か月です。", EN_COUNT, "12", "ja"),
    ("1年は12か月です。", EN_COUNT, "12", "ja"),
    ("答えは3か所です。", SOUTHERN_COUNT, "3", "ja"),
    ("5か国です。", NATIONS, "5", "ja"),
    ("12か月", MONTHS, "12か月", "ja"),
    ("The total is 42 or so.", ("42", "24"), "42", "en"),
    # ... while a choice stays a choice
    ("答えは9個か10個です。", ("9", "10"), None, "ja"),
    ("答えは12か13です。", EN_COUNT, None, "ja"),
    ("12か13です。", EN_COUNT, None, "ja"),
    ("12か月か13か月です。", EN_COUNT, None, "ja"),
    ("The total is 42 or so, or 43.", ("42", "43"), None, "en"),
    ("The total is 12 or 13.", EN_COUNT, None, "en"),
    # an answer and then its reason or a remark: the answer stands; a retraction still gives its correction
    ("ポジティブ。理由は褒めているからです。", SENTIMENT, "ポジティブ", "ja"),
    ("イ。東京が日本の首都だからです。", KANA, "イ", "ja"),
    ("イ。東京は日本の首都です。", KANA, "イ", "ja"),
    ("B。理由は以下の通りです。", LATIN, "B", "ja"),
    ("B. 東京です。", LATIN, "B", "ja"),
    ("イ。いや、ウです。", KANA, "ウ", "ja"),
    ("イ。いいえ、ウです。", KANA, "ウ", "ja"),
    ("イ。ウです。", KANA, "イ", "ja"),  # one answer: the opening, never both
    # "which option is incorrect?": naming the incorrect option, and nothing else, picks it
    ("The incorrect option is C.", LATIN, "C", "en"),
    ("The wrong choice is C.", LATIN, "C", "en"),
    ("Incorrect option: C", LATIN, "C", "en"),
    ("誤りはイです。", KANA, "イ", "ja"),
    ("間違いはイです。", KANA, "イ", "ja"),
    ("答え：イ（誤り）", KANA, "イ", "ja"),
    # ... and a reply that names a right answer and a wrong one scores only the right one
    ("正解はネガティブで、誤りはポジティブです。", SENTIMENT, "ネガティブ", "ja"),
    ("The incorrect option is B. The answer is C.", LATIN, "C", "en"),
    ("The wrong choice is B. The answer is C.", LATIN, "C", "en"),
    ("ネガティブです。誤りはポジティブです。", SENTIMENT, None, "ja"),
    ("Bです。誤りはCです。", LATIN, None, "ja"),
    ("誤りはイです。理由はウが正しいからです。", KANA, None, "ja"),
    ("The wrong answer is B. The answer is C.", LATIN, "C", "en"),
    ("正解はネガティブで、不正解はポジティブです。", SENTIMENT, "ネガティブ", "ja"),
    ("정답은 부정이고 오답은 긍정입니다.", KO_SENTIMENT, "부정", "ko"),
    # は inside a word (当てはまる, やはり) is no topic
    ("当てはまるのはイです。", KANA, "イ", "ja"),
    ("当てはまらないのはイです。", KANA, "イ", "ja"),
    ("やはりイです。", KANA, "イ", "ja"),
    ("やはりポジティブだと思います。", SENTIMENT, "ポジティブ", "ja"),
    # a tuple, an interval or a system's solution stated in prose, and a tuple in a box, spaces aside
    ("The point is (2, 3).", TUPLES, "(2, 3)", "en"),
    ("The interval is (0, 1).", INTERVALS, "(0, 1)", "en"),
    ("The solution is x = 2, y = 3.", PAIR, "x=2, y=3", "en"),
    (r"\boxed{(2,3)}", TUPLES, "(2, 3)", "en"),
    ("The point is (2, 3) or (3, 2).", TUPLES, None, "en"),
    ("The solution is x = 2, y = 3 or x = 3, y = 2.", PAIR, None, "en"),
    # an option's letter and then its text
    ("The answer is B, Paris.", LATIN, "B", "en"),
    ("The answer is B, C.", LATIN, None, "en"),
    ("The answer is B, or C.", LATIN, None, "en"),
    ("B, and C", LATIN, None, "en"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), REVIEWED_REGRESSIONS)
def test_reviewed_regressions_score_their_answer(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


LATEX_BOXES = [
    # a math-trained model boxes an option or a word in LaTeX's text and font commands
    (r"\boxed{\text{B}}", LATIN, "B", "en"),
    (r"$\boxed{\textbf{(C)}}$", LATIN, "C", "en"),
    (r"\boxed{\mathrm{B}}", LATIN, "B", "en"),
    (r"\boxed{\textbf{\text{B}}}", LATIN, "B", "en"),
    (r"\boxed{\text{ポジティブ}}", SENTIMENT, "ポジティブ", "ja"),
    # ... and the box still commits to one
    (r"\boxed{\text{B or C}}", LATIN, None, "en"),
    (r"\boxed{\text{B}}\boxed{\text{C}}", LATIN, "C", "en"),
    (r"\boxed{\text{not B}}", LATIN, None, "en"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), LATEX_BOXES)
def test_an_option_boxed_in_latex_text_is_the_answer(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


# From a Vietnamese/Indonesian/Thai/Malay RL team's trial: 189 replies hand-graded, 56 disagreed with a fair grader.
THAI = ("ก", "ข", "ค", "ง")

RIGHT_ANSWER_PHRASINGS = [
    # common phrasings of a right answer scored 0: a lead-in without a copula or colon before a label or a number, a
    # lead-in with "correct" in it, a choice verb, the answer called right after it
    ("Jawabannya B.", LATIN, "B", "id"),
    ("Jadi, jawabannya B", LATIN, "B", "id"),
    ("Jawapannya C.", LATIN, "C", "ms"),
    ("Jawaban yang benar adalah C.", LATIN, "C", "id"),
    ("Jawapan yang betul ialah C.", LATIN, "C", "ms"),
    ("Jawabannya 12.", EN_COUNT, "12", "id"),
    ("Chọn B.", LATIN, "B", "vi"),
    ("Vậy ta chọn phương án C.", LATIN, "C", "vi"),
    ("Đáp án B", LATIN, "B", "vi"),
    ("Đáp án đúng là C.", LATIN, "C", "vi"),
    ("Câu trả lời đúng là phương án D.", LATIN, "D", "vi"),
    ("Dap an la B", LATIN, "B", "vi"),
    ("Cau tra loi dung la phuong an D", LATIN, "D", "vi"),
    ("Chon C", LATIN, "C", "vi"),
    ("ตอบ ค", THAI, "ค", "th"),
    ("ตอบข้อ ค ครับ", THAI, "ค", "th"),
    ("คำตอบที่ถูกต้องคือ ค", THAI, "ค", "th"),
    ("ดังนั้นคำตอบที่ถูกต้องคือข้อ ค", THAI, "ค", "th"),
    ("I'd go with B.", LATIN, "B", "en"),
    ("I choose B.", LATIN, "B", "en"),
    ("I'll pick option C.", LATIN, "C", "en"),
    ("B is correct.", LATIN, "B", "en"),
    ("B is the correct answer.", LATIN, "B", "en"),
    ("B is correct because the others contradict the text.", LATIN, "B", "en"),
    ("アが正解です。", KANA, "ア", "ja"),
    ("ウが正しいです。", KANA, "ウ", "ja"),
    ("B가 정답입니다.", LATIN, "B", "ko"),
    ("答案选B。", LATIN, "B", "zh"),
    ("故选B", LATIN, "B", "zh"),
    ("选B。", LATIN, "B", "zh"),
    ("B是正确答案。", LATIN, "B", "zh"),
    ("B là đáp án đúng.", LATIN, "B", "vi"),
    ("B adalah jawaban yang benar.", LATIN, "B", "id"),
    ("B adalah jawapan yang betul.", LATIN, "B", "ms"),
    ("B ang tamang sagot.", LATIN, "B", "tl"),
    ("ข้อ ค ถูกต้อง", THAI, "ค", "th"),
    # ... while a denial, a question, a choice or a named wrong option scores none
    ("B is not correct.", LATIN, None, "en"),
    ("Is B correct?", LATIN, None, "en"),
    ("I think B is correct or C is.", LATIN, None, "en"),
    ("Neither A nor B is correct.", LATIN, None, "en"),
    ("B or C is correct.", LATIN, None, "en"),
    ("Chọn B hoặc C.", LATIN, None, "vi"),
    ("I choose to compare each option first.", LATIN, None, "en"),
    # "Đáp án A" also names option A: said wrong after the label, it is rejected
    ("Đáp án A sai.", LATIN, None, "vi"),
    ("Jawabannya A salah.", LATIN, None, "id"),
    ("ตอบ ก ผิด", THAI, None, "th"),
    ("Đáp án A sai, đáp án C đúng.", LATIN, "C", "vi"),
    # a lead-in without a copula before prose is no commitment: the last line still gives the answer
    ("Đáp án đúng phải thỏa mãn cả hai điều kiện.\nC", LATIN, "C", "vi"),
    ("Jawabannya bisa dicari dengan eliminasi.\nC", LATIN, "C", "id"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), RIGHT_ANSWER_PHRASINGS)
def test_common_phrasings_of_a_right_answer_score(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


VI_YES_NO = ("Có", "Không")

UNMARKED_DENIALS_AND_QUESTIONS = [
    # a denial after its copula, and a question without a question mark (Thai writes none; Vietnamese, Indonesian and
    # Malay often leave it out), scored as the stated answer, by the text rule and by the number rule
    ("Đáp án không phải là B.", LATIN, None, "vi"),
    ("Dap an khong phai la B.", LATIN, None, "vi"),
    ("Kết quả không phải là 12.", EN_COUNT, None, "vi"),
    ("Hasilnya bukanlah 12.", EN_COUNT, None, "id"),
    ("Hasilnya bukan 12.", EN_COUNT, None, "ms"),
    ("Jadi 12 kah jawabannya", EN_COUNT, None, "id"),
    ("Jadi jawabannya 12kah", EN_COUNT, None, "id"),
    ("Apakah jawabannya 12", EN_COUNT, None, "id"),
    ("Benarkah jawapannya 12", EN_COUNT, None, "ms"),
    ("Ý bạn là 12 quả táo phải không", EN_COUNT, None, "vi"),
    ("Đáp án là 12 à", EN_COUNT, None, "vi"),
    ("Đáp án là B đúng không", LATIN, None, "vi"),
    ("Đáp án là 12 không", EN_COUNT, None, "vi"),
    ("Đáp án là B hả", LATIN, None, "vi"),
    ("หมายถึง 12 ใช่ไหม", EN_COUNT, None, "th"),
    ("คำตอบคือ ข ใช่มั้ย", THAI, None, "th"),
    ("คำตอบคือ 12 หรือเปล่า", EN_COUNT, None, "th"),
    ("ข้อ ข เหรอ", THAI, None, "th"),
    # stated answers keep passing: "là không" is the answer "no", langkah ("step") is no -kah
    ("Câu trả lời là không.", VI_YES_NO, "Không", "vi"),
    ("Không", VI_YES_NO, "Không", "vi"),
    ("Đáp án là 12.", EN_COUNT, "12", "vi"),
    ("Langkah 2: jumlahkan. Hasilnya 12", EN_COUNT, "12", "id"),
    ("คำตอบคือ 12", EN_COUNT, "12", "th"),
    ("Đáp án là B.", LATIN, "B", "vi"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), UNMARKED_DENIALS_AND_QUESTIONS)
def test_a_denial_or_an_unmarked_question_is_not_the_answer(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


OR_AND_CHOICES = [
    # "or" and "and" before a second answer name two, neither the answer (hay is Vietnamese "or"; dan, và, และ, กับ,
    # and, 和 "and"), and so do two labels side by side
    ("Đáp án là 12 hay 13", EN_COUNT, None, "vi"),
    ("Đáp án là A hay B.", LATIN, None, "vi"),
    ("Chọn A hay B", LATIN, None, "vi"),
    ("Jawaban: A dan B", LATIN, None, "id"),
    ("Jawabannya 12 dan 13.", EN_COUNT, None, "id"),
    ("Jawapannya A dan B.", LATIN, None, "ms"),
    ("Đáp án là A và B.", LATIN, None, "vi"),
    ("Đáp án là 12 và 13.", EN_COUNT, None, "vi"),
    ("คำตอบคือ ก และ ข", THAI, None, "th"),
    ("คำตอบคือ ก กับ ข", THAI, None, "th"),
    ("คำตอบคือ 12 และ 13", EN_COUNT, None, "th"),
    ("คำตอบคือ ข ค", THAI, None, "th"),
    ("The answer is B and C.", LATIN, None, "en"),
    ("The answer is 12 and 13.", EN_COUNT, None, "en"),
    ("答案是B和C。", LATIN, None, "zh"),
    # ... while "and" before a word goes on about the answer, and hay before an intensifier is "good"
    ("Jawabannya B dan alasannya karena teks menyebutkannya.", LATIN, "B", "id"),
    ("The answer is B and the reason is the second sentence.", LATIN, "B", "en"),
    ("Đáp án là B và lý do là câu thứ hai.", LATIN, "B", "vi"),
    ("Đáp án là B, hay quá.", LATIN, "B", "vi"),
    ("คำตอบคือ ข ครับ", THAI, "ข", "th"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), OR_AND_CHOICES)
def test_or_and_and_before_a_second_answer_name_no_answer(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


SELF_CORRECTIONS = [
    # a retraction takes back the answer before it, in its sentence or opening the next: the correction is the
    # answer, by the text rule and the number rule
    ("Đáp án là A. À không, phải là C.", LATIN, "C", "vi"),
    ("Dap an la A. A khong, phai la C.", LATIN, "C", "vi"),
    ("Đáp án là 12. À không, phải là 15.", ("12", "15"), "15", "vi"),
    ("Jawabannya adalah B. Eh, salah, yang benar C.", LATIN, "C", "id"),
    ("Jawabannya adalah 12. Eh salah, seharusnya 15.", ("12", "15"), "15", "id"),
    ("Jawapannya ialah B. Eh, yang betul C.", LATIN, "C", "ms"),
    ("คำตอบคือ ข ไม่สิ ค", THAI, "ค", "th"),
    ("คำตอบคือ 12 ไม่สิ 15", ("12", "15"), "15", "th"),
    ("B. No wait, C.", LATIN, "C", "en"),
    ("The answer is B. Actually, it's C.", LATIN, "C", "en"),
    ("The answer is 12. No wait, it's 15.", ("12", "15"), "15", "en"),
    ("The answer is B, no wait, C.", LATIN, "C", "en"),
    ("答案是B。不对，应该是C。", LATIN, "C", "zh"),
    ("答えは12個です。いや、15個です。", ("12", "15"), "15", "ja"),
    ("イ。いや、ウです。", KANA, "ウ", "ja"),
    # without a retraction word the first commitment stays: a later sentence is a remark
    ("The answer is B. Actually, this follows from the second sentence.", LATIN, "B", "en"),
    ("Jawabannya adalah B. Salah satu alasannya adalah C keliru.", LATIN, "B", "id"),
    ("Đáp án là A. C không đúng vì thiếu dữ kiện.", LATIN, "A", "vi"),
    ("Jawabannya adalah 12. Lalu 15 adalah sisanya.", ("12", "15"), "12", "id"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), SELF_CORRECTIONS)
def test_a_self_correction_gives_the_correction(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


FOUR_CITIES = ("Hà Nội", "Huế", "Đà Nẵng", "Sài Gòn", "A", "B", "C", "D")
FOUR_NUMBERS = ("10", "12", "14", "16", "A", "B", "C", "D")

OPTION_LISTS = [
    # a reply whose last lines list the labelled options commits to none of them (it scored for the last option)
    ("A. Hà Nội\nB. Huế\nC. Đà Nẵng\nD. Sài Gòn", FOUR_CITIES, None, "vi"),
    ("Pilihan:\nA. 10\nB. 12\nC. 14\nD. 16", FOUR_NUMBERS, None, "id"),
    ("(A) 10\n(B) 12\n(C) 14\n(D) 16", FOUR_NUMBERS, None, "en"),
    ("ก. 10\nข. 12\nค. 14\nง. 16", ("10", "12", "14", "16"), None, "th"),
    ("Kita lihat opsinya.\nC. 14\nD. 16", FOUR_NUMBERS, None, "id"),
    # ... while a lead-in or a box after the list, or a last line that is no list item, still commits
    ("A. 10\nB. 12\nJawabannya B", FOUR_NUMBERS, "B", "id"),
    ("A. 10\nB. 12\nC. 14\nD. 16\n\\boxed{C}", FOUR_NUMBERS, "C", "en"),
    ("A. 10\nB. 12\nC. 14\nD. 16\nB", LATIN, "B", "en"),
    ("A. 10\nB. 12\nĐáp án là 12", FOUR_NUMBERS, "12", "vi"),
    ("B. Because the second sentence is negative.", LATIN, "B", "en"),
    ("Step 1: 5 + 7 = 12\nStep 2: so 12", EN_COUNT, "12", "en"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), OPTION_LISTS)
def test_a_list_of_the_options_is_no_answer(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


APPLES = ("12", "13")
RANGES_AND_BRACKETED_CHOICES = [
    # a range offers both of its numbers, and a choice in brackets is a choice (the SEA RL trial: both scored 12)
    ("Jawabannya 12-13 apel.", APPLES, None, "id"),
    ("Jawabannya 12 (atau 13).", APPLES, None, "id"),
    ("答えは12～13個です。", APPLES, None, "ja"),
    ("The answer is 12–13.", APPLES, None, "en"),
    ("The answer is B (or C).", LATIN, None, "en"),
    ("Jawaban: A (atau B)", LATIN, None, "id"),
    # ... while arithmetic, a change "from 10 to 12" and a remark in brackets keep their answer
    ("The answer is 15-3=12.", APPLES, "12", "en"),
    ("The price went from 10 to 12.", APPLES, "12", "en"),
    ("Jawabannya 12 apel (bukan 13).", APPLES, "12", "id"),
    ("Jawabannya 12 (dua belas).", APPLES, "12", "id"),
    ("The answer is B (Paris).", LATIN, "B", "en"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), RANGES_AND_BRACKETED_CHOICES)
def test_a_range_or_a_bracketed_choice_is_no_answer(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


NUMBERS_12_13_15 = ("12", "13", "15")
A_PLAIN_BUT = [
    # "but" turns to another answer only after a "not": a plain "but" after the answer is a remark (all four gave 15)
    ("The answer is 12, but I first got 15.", NUMBERS_12_13_15, "12", "en"),
    ("The answer is 12 but 15 is close.", NUMBERS_12_13_15, "12", "en"),
    ("Jawabannya 12 tapi 15 lebih kecil.", NUMBERS_12_13_15, "12", "id"),
    ("คำตอบคือ 12 แต่เดิมคิดว่า 15", NUMBERS_12_13_15, "12", "th"),
    # ... and after one it gives its correction, Thai's แต่ after ไม่ใช่ too (it gave nothing)
    ("The answer is not 15 but 12.", NUMBERS_12_13_15, "12", "en"),
    ("Jawabannya bukan 15 tetapi 12.", NUMBERS_12_13_15, "12", "id"),
    ("ไม่ใช่ 15 แต่เป็น 12", NUMBERS_12_13_15, "12", "th"),
    ("ไม่ใช่ ก แต่เป็น ค", THAI, "ค", "th"),
    ("คำตอบคือ ค แต่ต้องตรวจสอบอีกครั้ง", THAI, "ค", "th"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), A_PLAIN_BUT)
def test_a_plain_but_is_a_remark_and_not_x_but_y_gives_y(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


COUNTS = ("2", "3", "5", "7", "10", "35")
CHOOSING_IN_WORKING = [
    # a choosing verb in working picks a count or a variable, not the answer (each gave its first number or "a")
    ("Chọn 2 học sinh từ 5 học sinh có 10 cách.", COUNTS, "10", "vi"),
    ("Ta chọn 3 quả từ 7 quả táo. Số cách chọn là 35.", COUNTS, "35", "vi"),
    ("I choose 2 of the 5 books; there are 10 ways.", COUNTS, "10", "en"),
    ("从5人中选2人，共有10种选法。", COUNTS, "10", "zh"),
    ("To test, I choose a = 2; then only option C works.\nC is correct.", LATIN, "C", "en"),
    ("Chọn a = 1 ta được giá trị 3. Vậy đáp án là C.", LATIN, "C", "vi"),
    # ... while a label that ends its clause is the pick
    ("Chọn B.", LATIN, "B", "vi"),
    ("I choose B.", LATIN, "B", "en"),
    ("I'll pick C (Paris).", LATIN, "C", "en"),
    ("故选B", LATIN, "B", "zh"),
    ("故选B，因为只有B满足条件。", LATIN, "B", "zh"),
    ("Chọn C vì 3 × 4 = 12.", LATIN, "C", "vi"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), CHOOSING_IN_WORKING)
def test_a_choosing_verb_commits_only_to_a_label_that_ends_its_clause(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


RETRACTIONS_WITHOUT_A_CORRECTION = [
    # a retraction word before a remark or a check corrects nothing: the earlier answer stands (each gave the next
    # sentence's first answer, or nothing); "eh" is a filler unless an admission or a lead follows it
    ("The answer is B. Oops, C is too large.", LATIN, "B", "en"),
    ("The answer is B. No wait, C is too large, so it stays B.", LATIN, "B", "en"),
    ("The answer is B. Eh, C is close too.", LATIN, "B", "en"),
    ("Jawabannya B. Eh, C terlalu besar.", LATIN, "B", "id"),
    ("Ang sagot ay B. Eh, masyadong malaki ang C.", LATIN, "B", "tl"),
    ("The answer is 12. No wait, let me recheck: 3 × 5 = 15 minus 3 gives 12. Yes, 12.", ("12", "15", "3"), "12",
     "en"),
    ("答えは12個です。いや、念のため確認すると15-3=12なので12個です。", ("12", "15", "3"), "12", "ja"),
    ("The answer is B. No wait, let me double-check option C: it is too large. So B stands.", LATIN, "B", "en"),
    ("The answer is B. Eh, close enough.", LATIN, "B", "en"),
    ("答えはイです。いや、念のためウも確認すると大きすぎます。よってイです。", KANA, "イ", "ja"),
    # ... while a lead or an answer standing alone as the retraction's sentence corrects
    ("Jawabannya B. Eh, maksud saya C.", LATIN, "C", "id"),
    ("The answer is B. Oops, C.", LATIN, "C", "en"),
    ("The answer is 12. No wait, 15 apples.", ("12", "15"), "15", "en"),
    ("答えはイです。いや、(ウ)。", KANA, "ウ", "ja"),
    ("Ang sagot ay B. Teka, C pala.", LATIN, "C", "tl"),
    # ... and after a check, a conclusion whose answer stands alone is what the reply ends on
    ("The answer is B. No wait, let me check C: 2 + 3 = 5. So C.", LATIN, "C", "en"),
    ("The answer is 12. No wait, let me recheck: 3 × 5 = 15. So 15.", ("12", "15", "3", "5"), "15", "en"),
    ("答えはイです。いや、念のためウも確認すると2+3=5になります。よってウです。", KANA, "ウ", "ja"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), RETRACTIONS_WITHOUT_A_CORRECTION)
def test_a_retraction_before_a_remark_leaves_the_answer(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


PARTICLES_AND_CLAUSES_AFTER_THE_ANSWER = [
    # a sentence-final particle is no second label, and "and I ..." starts a clause (each gave nothing)
    ("Đáp án là B ạ.", LATIN, "B", "vi"),
    ("Đáp án: B ạ", LATIN, "B", "vi"),
    ("Đáp án là B ạ, vì 3 × 4 = 12.", LATIN, "B", "vi"),
    ("Đáp án là B nhé.", LATIN, "B", "vi"),
    ("คำตอบคือ ข นะ", THAI, "ข", "th"),
    ("Đáp án là B. À không, C ạ.", LATIN, "C", "vi"),
    ("The answer is 12 and I am sure.", EN_COUNT, "12", "en"),
    ("The answer is C and I am confident.", LATIN, "C", "en"),
    ("The answer is C and I'm confident.", LATIN, "C", "en"),
    # ... while a second label after "and", or beside the first, still names two
    ("The answer is B and C.", LATIN, None, "en"),
    ("The answer is 12 and 13.", EN_COUNT, None, "en"),
    ("คำตอบคือ ข ค", THAI, None, "th"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), PARTICLES_AND_CLAUSES_AFTER_THE_ANSWER)
def test_a_particle_or_a_clause_after_the_answer_is_no_second_label(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


STATEMENTS_THAT_END_LIKE_A_QUESTION = [
    # không after thì, đều, cũng denies; à after "bạn" addresses the reader; ผ้าไหม is silk: statements, not
    # questions (each gave nothing)
    ("Vậy Lan có 12 quả táo, còn Minh thì không.", EN_COUNT, "12", "vi"),
    ("Vay Lan co 12 qua, con Minh thi khong.", EN_COUNT, "12", "vi"),
    ("Đáp án là B, vì A, C, D đều không.", LATIN, "B", "vi"),
    ("Đáp án là B, các phương án khác cũng không.", LATIN, "B", "vi"),
    ("Đáp án là B đó bạn à.", LATIN, "B", "vi"),
    ("เธอซื้อผ้า 12 ผืน ทั้งหมดเป็นผ้าไหม", EN_COUNT, "12", "th"),
    # ... while the particle right after the answer still asks
    ("Đáp án là 12 không", EN_COUNT, None, "vi"),
    ("Đáp án là 12 à", EN_COUNT, None, "vi"),
    ("คำตอบคือ 12 ไหม", EN_COUNT, None, "th"),
    ("คำตอบคือ ข ถูกไหม", THAI, None, "th"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), STATEMENTS_THAT_END_LIKE_A_QUESTION)
def test_a_statement_ending_in_a_negation_or_a_noun_is_no_question(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


STEP_LISTS = [
    # lettered lines of working are steps, not the options: the last step gives its number (each gave nothing)
    ("a) First find the cost: 3 × 4 = 12.\nb) Then add tax: 12 + 3 = 15.", ("12", "15", "3"), "15", "en"),
    ("A. The cost is 3 × 4 = 12.\nB. With tax it is 12 + 3 = 15.", ("12", "15", "3"), "15", "en"),
    ("a) Lan starts with the twelve apples that her mother gave her, 12\nb) and after buying three more she has 15",
     ("12", "15", "3"), "15", "en"),
    # ... while the options listed, and an option list after a step, are still no answer
    ("a) 3 × 4 = 12\nA. 10\nB. 12\nC. 14\nD. 16", FOUR_NUMBERS, None, "en"),
    ("(A) 10\n(B) 12\n(C) 14\n(D) 16", FOUR_NUMBERS, None, "en"),
    ("A. Hà Nội\nB. Huế\nC. Đà Nẵng\nD. Sài Gòn", FOUR_CITIES, None, "vi"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), STEP_LISTS)
def test_a_lettered_list_of_steps_gives_its_last_number(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


ANOTHER_ANSWER_RIGHT_TOO = [
    # a later clause that offers another answer as right or possible too commits the reply to neither (each gave the
    # first; "Jawabannya 12 tapi 15 juga mungkin." was held to 12, which was the defect)
    ("B is correct. C is also correct.", LATIN, None, "en"),
    ("Jawabannya B, tapi C juga mungkin.", LATIN, None, "id"),
    ("The answer is 12, but 15 is also possible.", NUMBERS_12_13_15, None, "en"),
    ("Jawabannya 12 tapi 15 juga mungkin.", NUMBERS_12_13_15, None, "id"),
    ("Jawabannya B. Eh, C juga masuk akal.", LATIN, None, "id"),
    ("Ang sagot ay B. Eh, C rin siguro.", LATIN, None, "tl"),
    ("Đáp án là B, nhưng C cũng đúng.", LATIN, None, "vi"),
    ("The answer is B, though C is correct too.", LATIN, None, "en"),
    ("12 apples. 15 is also possible.", NUMBERS_12_13_15, None, "en"),
    # ... while another answer called wrong, close or not right too keeps the answer
    ("The answer is B. C is also wrong.", LATIN, "B", "en"),
    ("The answer is B. C is also not correct.", LATIN, "B", "en"),
    ("The answer is 12 but 15 is close.", NUMBERS_12_13_15, "12", "en"),
    ("The answer is B. B is also the only option that fits.", LATIN, "B", "en"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), ANOTHER_ANSWER_RIGHT_TOO)
def test_another_answer_offered_as_right_too_commits_to_neither(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


SEVEN_EIGHT = ("7", "8")

HEDGES_PAST_A_UNIT_OR_A_SENTENCE_END = [
    # a second number offered after a unit word, a comma or a sentence end, or as what the answer could be, is a
    # choice as "7 or 8" is (each gave 7)
    ("The answer is 7 apples or 8 apples.", SEVEN_EIGHT, None, "en"),
    ("The answer is 7 apples, or 8 if you count the rotten one.", SEVEN_EIGHT, None, "en"),
    ("The answer is 7 red apples, or maybe 8.", SEVEN_EIGHT, None, "en"),
    ("The answer is 7. Or 8.", SEVEN_EIGHT, None, "en"),
    ("The answer is 7.\nOr maybe 8.", SEVEN_EIGHT, None, "en"),
    ("The answer is 7, though it could be 8.", SEVEN_EIGHT, None, "en"),
    ("The answer is 7 apples. It might also be 8.", SEVEN_EIGHT, None, "en"),
    ("Jawabannya 7 apel, atau 8 kalau dihitung yang busuk.", SEVEN_EIGHT, None, "id"),
    ("Jawabannya 7. Atau 8.", SEVEN_EIGHT, None, "id"),
    ("Jawabannya 7 apel, tapi bisa juga 8.", SEVEN_EIGHT, None, "id"),
    ("Đáp án là 7 quả hoặc 8 quả.", SEVEN_EIGHT, None, "vi"),
    ("Đáp án là 7, cũng có thể là 8.", SEVEN_EIGHT, None, "vi"),
    ("答えは7個。または8個。", SEVEN_EIGHT, None, "ja"),
    # ... while an answer with its unit, and a remark with another number or an "or" that offers none, keeps it
    ("The answer is 7 apples.", SEVEN_EIGHT, "7", "en"),
    ("The answer is 7 apples. Originally there were 8.", SEVEN_EIGHT, "7", "en"),
    ("The answer is 7 apples or so.", SEVEN_EIGHT, "7", "en"),
    ("The answer is 7 apples, and 8 is what Tom had.", SEVEN_EIGHT, "7", "en"),
    ("The answer is 7. It could be checked with 3 + 4 = 7.", SEVEN_EIGHT, "7", "en"),
    ("The answer is 7 apples, though it could be 7 pears too.", SEVEN_EIGHT, "7", "en"),
    ("Jawabannya 7 apel, karena 15 - 8 = 7.", SEVEN_EIGHT, "7", "id"),
    ("Đáp án là 7 quả.", SEVEN_EIGHT, "7", "vi"),
    ("答えは7個です。", SEVEN_EIGHT, "7", "ja"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), HEDGES_PAST_A_UNIT_OR_A_SENTENCE_END)
def test_a_second_number_offered_past_a_unit_or_a_sentence_end_is_a_choice(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


ONE_ANSWER_RESTATED_OR_REMARKED = [
    # the answer restated in another unit or form, the same number again, or a "could/may be" about something else
    # than the answer commits to the answer: a false hedge scores a right answer 0 (each gave none)
    ("The answer is 12 km, or 12000 m.", ("12", "12000"), "12", "en"),
    ("The answer is 2 hours or 120 minutes.", ("2", "120"), "2", "en"),
    ("The answer is 7 days or 1 week.", ("7", "1"), "7", "en"),
    ("The answer is 25 cm, or 0.25 m.", ("25", "0.25"), "25", "en"),
    ("The answer is 12 apples. Or 12 in total.", ("12", "13"), "12", "en"),
    ("The answer is 45%, or 0.45.", ("45", "46"), "45", "en"),
    ("The answer is 1/2 or 0.5.", ("0.5", "0.25"), "0.5", "en"),
    ("The answer is 12. Note that for general n the count may be 2n.", ("12", "2"), "12", "en"),
    ("The answer is 12. Each box could be 3 by 4.", ("12", "3"), "12", "en"),
    ("Jawabannya 12, karena kita bisa 3 kali membagi 4.", ("12", "3"), "12", "id"),
    ("Jawabannya 12, kita bisa 3 kali membagi 4.", ("12", "3"), "12", "id"),
    # ... while the same unit or none, or "it could be N" in the answer's clause, still offers a choice
    ("The answer is 7 apples or 8 apples.", SEVEN_EIGHT, None, "en"),
    ("The answer is 7 km, or 8 km.", SEVEN_EIGHT, None, "en"),
    ("The answer is 7 apples. Or 8 apples.", SEVEN_EIGHT, None, "en"),
    ("The answer is 7 apples, or 8 if you count the rotten one.", SEVEN_EIGHT, None, "en"),
    ("The answer is 7, though it could also be 8 apples.", SEVEN_EIGHT, None, "en"),
    ("Jawabannya 7 apel, atau 8 kalau dihitung yang busuk.", SEVEN_EIGHT, None, "id"),
    ("The answer is 12 or 13.", ("12", "13"), None, "en"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), ONE_ANSWER_RESTATED_OR_REMARKED)
def test_an_answer_restated_in_another_unit_or_remarked_on_is_no_choice(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)


SCALE_AND_SIGN_WORDS = [
    # a scale word joined by a hyphen to a noun is an adjective, and a number word before a sign word is its operand
    # (they gave 200 and -5)
    ("The answer is 2 hundred-dollar bills.", ("2", "200"), "2", "en"),
    ("The answer is 3 thousand-seat halls.", ("3", "3000"), "3", "en"),
    ("Jawabannya 3 juta-an.", ("3", "3000000"), "3000000", "id"),
    ("ten minus 5", ("5", "-5"), "5", "en"),
    ("sepuluh minus 5", ("5", "-5"), "5", "id"),
    ("The result is twelve minus 5", ("5", "-5"), "5", "en"),
    # ... while a scale word and a sign word that write one number still do
    ("I have 2 hundred-dollar bills, so the answer is 200.", ("2", "200"), "200", "en"),
    ("The answer is 2 hundred.", ("2", "200"), "200", "en"),
    ("The answer is minus 5.", ("5", "-5"), "-5", "en"),
    ("Suhu hari ini minus 5", ("5", "-5"), "-5", "id"),
]


@pytest.mark.parametrize(("reply", "options", "right", "language"), SCALE_AND_SIGN_WORDS)
def test_an_adjective_scale_word_or_an_operand_sign_word_is_no_part_of_the_number(reply, options, right, language):
    assert verdicts(reply, options, language) == expected(options, right)
