"""Generate tempa's multilingual sample data (deterministic; no network, no model).

    python recipes/data/make_sample.py            # rewrites the three files next to this script
    python recipes/data/make_sample.py --check    # fails if the files differ from a fresh build

Writes, in OpenAI ``messages`` format with a ``language`` field (ISO 639-1; ``tl`` = Filipino):

- ``sample_instruct.jsonl``: instruction/response pairs without reasoning (sentiment,
  translation, capitals; some with a system prompt, some two-turn);
- ``sample_reasoning.jsonl``: arithmetic word problems with reasoning traces, as
  ``reasoning_content`` or as R1-style ``<think>...</think>`` in the answer, each with its
  verifiable ``answer``; some two-turn with a trace on both assistant turns;
- ``sample_prompts.jsonl``: user prompts only, for on-policy sampling and synthesis stages, with
  ``answer`` set where it is verifiable (arithmetic, sentiment labels) and null otherwise.

Sentences are written per language and filled into templates; the repetition is intended.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tempa.chat_templates.thinking import THINK_CLOSE, THINK_OPEN

SEED = 20250101
LANGUAGES = ("en", "id", "vi", "th", "ta", "tl", "ja")
HERE = Path(__file__).resolve().parent

SYSTEM = {
    "en": "You are a helpful assistant.",
    "id": "Kamu adalah asisten yang membantu.",
    "vi": "Bạn là một trợ lý hữu ích.",
    "th": "คุณเป็นผู้ช่วยที่เป็นประโยชน์",
    "ta": "நீங்கள் ஒரு உதவிகரமான உதவியாளர்.",
    "tl": "Isa kang matulunging katulong.",
    "ja": "あなたは親切なアシスタントです。",
}

# --- sentiment ------------------------------------------------------------------------------------

SENTIMENT_PROMPT = {
    "en": "What is the sentiment of the following sentence?\nSentence: {s}\nAnswer:",
    "id": "Apa sentimen dari kalimat berikut ini?\nKalimat: {s}\nJawaban:",
    "vi": "Cảm xúc của câu sau đây là gì?\nCâu: {s}\nTrả lời:",
    "th": "ประโยคต่อไปนี้แสดงความรู้สึกแบบใด\nประโยค: {s}\nคำตอบ:",
    "ta": "பின்வரும் வாக்கியத்தின் உணர்வு என்ன?\nவாக்கியம்: {s}\nபதில்:",
    "tl": "Ano ang sentimyento ng sumusunod na pangungusap?\nPangungusap: {s}\nSagot:",
    "ja": "次の文の感情は何ですか。\n文: {s}\n答え:",
}
SENTIMENT_LABELS = {
    "en": ("Positive", "Negative"),
    "id": ("Positif", "Negatif"),
    "vi": ("Tích cực", "Tiêu cực"),
    "th": ("เชิงบวก", "เชิงลบ"),
    "ta": ("நேர்மறை", "எதிர்மறை"),
    "tl": ("Positibo", "Negatibo"),
    "ja": ("ポジティブ", "ネガティブ"),
}
# (positive sentences, negative sentences)
SENTIMENT = {
    "en": (
        ["The food at this restaurant is delicious.", "The hotel staff were very friendly.",
         "I really enjoyed this film.", "The delivery arrived quickly and the package was intact."],
        ["This book is very boring.", "The service was slow and the waiter was rude.",
         "The phone broke after only two days.", "The room was dirty and noisy."],
    ),
    "id": (
        ["Makanan di restoran ini enak sekali.", "Staf hotelnya sangat ramah.",
         "Saya sangat menikmati film ini.", "Kirimannya datang dengan cepat dan paketnya utuh."],
        ["Buku ini sangat membosankan.", "Pelayanannya lambat dan pelayannya kasar.",
         "Ponselnya rusak setelah baru dua hari.", "Kamarnya kotor dan bising."],
    ),
    "vi": (
        ["Đồ ăn ở nhà hàng này rất ngon.", "Nhân viên khách sạn rất thân thiện.",
         "Tôi thật sự thích bộ phim này.", "Hàng giao nhanh và gói hàng còn nguyên vẹn."],
        ["Cuốn sách này rất nhàm chán.", "Phục vụ chậm và người bồi bàn thô lỗ.",
         "Điện thoại bị hỏng chỉ sau hai ngày.", "Căn phòng bẩn và ồn ào."],
    ),
    "th": (
        ["อาหารที่ร้านนี้อร่อยมาก", "พนักงานโรงแรมเป็นมิตรมาก",
         "ฉันชอบภาพยนตร์เรื่องนี้มาก", "ของมาส่งเร็วและกล่องพัสดุไม่เสียหาย"],
        ["หนังสือเล่มนี้น่าเบื่อมาก", "บริการช้าและพนักงานเสิร์ฟไม่สุภาพ",
         "โทรศัพท์เสียหลังจากใช้ได้แค่สองวัน", "ห้องสกปรกและเสียงดัง"],
    ),
    "ta": (
        ["இந்த உணவகத்தின் உணவு மிகவும் சுவையாக இருக்கிறது.", "விடுதி ஊழியர்கள் மிகவும் நட்பாக இருந்தார்கள்.",
         "இந்தத் திரைப்படத்தை நான் மிகவும் ரசித்தேன்.", "பொருள் விரைவாக வந்தது, பொட்டலமும் சேதமின்றி இருந்தது."],
        ["இந்தப் புத்தகம் மிகவும் சலிப்பாக இருக்கிறது.", "சேவை மெதுவாக இருந்தது, பணியாளர் முரட்டுத்தனமாக நடந்துகொண்டார்.",
         "இரண்டு நாட்களிலேயே கைபேசி பழுதாகிவிட்டது.", "அறை அழுக்காகவும் சத்தமாகவும் இருந்தது."],
    ),
    "tl": (
        ["Napakasarap ng pagkain sa restawran na ito.", "Napakabait ng mga tauhan ng hotel.",
         "Talagang nagustuhan ko ang pelikulang ito.", "Mabilis dumating ang padala at buo ang pakete."],
        ["Nakakainip ang aklat na ito.", "Mabagal ang serbisyo at bastos ang weyter.",
         "Nasira ang telepono pagkalipas lang ng dalawang araw.", "Marumi at maingay ang kuwarto."],
    ),
    "ja": (
        ["このレストランの料理はとてもおいしいです。", "ホテルのスタッフはとても親切でした。",
         "この映画を本当に楽しみました。", "荷物はすぐに届き、梱包も無傷でした。"],
        ["この本はとても退屈です。", "サービスが遅く、店員の態度も悪かったです。",
         "電話はたった二日で壊れてしまいました。", "部屋は汚くてうるさかったです。"],
    ),
}

# --- translation (parallel sentences) -------------------------------------------------------------

PARALLEL = {
    "en": ["The weather is very hot today.", "I would like to order a cup of coffee.",
           "The market opens at seven in the morning.", "My younger brother is studying at the university.",
           "Please close the door when you leave.", "We are going to the beach this weekend.",
           "This book is very interesting.", "How much does this shirt cost?",
           "The train to the city leaves every hour.", "She cooks rice and vegetables for dinner."],
    "id": ["Cuaca hari ini sangat panas.", "Saya ingin memesan secangkir kopi.",
           "Pasar buka pukul tujuh pagi.", "Adik laki-laki saya sedang kuliah di universitas.",
           "Tolong tutup pintunya saat kamu pergi.", "Kami akan pergi ke pantai akhir pekan ini.",
           "Buku ini sangat menarik.", "Berapa harga kemeja ini?",
           "Kereta ke kota berangkat setiap jam.", "Dia memasak nasi dan sayur untuk makan malam."],
    "vi": ["Hôm nay thời tiết rất nóng.", "Tôi muốn gọi một tách cà phê.",
           "Chợ mở cửa lúc bảy giờ sáng.", "Em trai tôi đang học đại học.",
           "Làm ơn đóng cửa khi bạn ra về.", "Cuối tuần này chúng tôi sẽ đi biển.",
           "Cuốn sách này rất thú vị.", "Cái áo sơ mi này giá bao nhiêu?",
           "Tàu đi thành phố khởi hành mỗi giờ.", "Cô ấy nấu cơm và rau cho bữa tối."],
    "th": ["วันนี้อากาศร้อนมาก", "ฉันอยากสั่งกาแฟหนึ่งถ้วย",
           "ตลาดเปิดตอนเจ็ดโมงเช้า", "น้องชายของฉันกำลังเรียนอยู่ที่มหาวิทยาลัย",
           "กรุณาปิดประตูเมื่อคุณออกไป", "สุดสัปดาห์นี้พวกเราจะไปทะเล",
           "หนังสือเล่มนี้น่าสนใจมาก", "เสื้อเชิ้ตตัวนี้ราคาเท่าไร",
           "รถไฟเข้าเมืองออกทุกชั่วโมง", "เธอหุงข้าวและผัดผักสำหรับมื้อเย็น"],
    "ta": ["இன்று வானிலை மிகவும் வெப்பமாக உள்ளது.", "நான் ஒரு கப் காபி ஆர்டர் செய்ய விரும்புகிறேன்.",
           "சந்தை காலை ஏழு மணிக்குத் திறக்கும்.", "என் தம்பி பல்கலைக்கழகத்தில் படிக்கிறான்.",
           "நீங்கள் வெளியே செல்லும்போது தயவுசெய்து கதவை மூடுங்கள்.",
           "இந்த வார இறுதியில் நாங்கள் கடற்கரைக்குச் செல்கிறோம்.",
           "இந்தப் புத்தகம் மிகவும் சுவாரஸ்யமானது.", "இந்தச் சட்டையின் விலை என்ன?",
           "நகரத்துக்குச் செல்லும் ரயில் ஒவ்வொரு மணி நேரமும் புறப்படுகிறது.",
           "அவள் இரவு உணவுக்குச் சாதமும் காய்கறிகளும் சமைக்கிறாள்."],
    "tl": ["Napakainit ng panahon ngayon.", "Gusto kong umorder ng isang tasa ng kape.",
           "Nagbubukas ang palengke nang alas-siyete ng umaga.",
           "Nag-aaral sa unibersidad ang nakababata kong kapatid na lalaki.",
           "Pakisara ang pinto kapag aalis ka.", "Pupunta kami sa dagat ngayong katapusan ng linggo.",
           "Napakainteresante ng aklat na ito.", "Magkano ang polong ito?",
           "Umaalis bawat oras ang tren papunta sa lungsod.", "Nagluluto siya ng kanin at gulay para sa hapunan."],
    "ja": ["今日はとても暑いです。", "コーヒーを一杯注文したいです。",
           "市場は朝七時に開きます。", "弟は大学で勉強しています。",
           "出かけるときはドアを閉めてください。", "今週末、私たちは海に行きます。",
           "この本はとても面白いです。", "このシャツはいくらですか。",
           "市内行きの電車は一時間ごとに出発します。", "彼女は夕食にご飯と野菜料理を作ります。"],
}
TRANSLATE_INTO = {
    "id": "Terjemahkan kalimat berikut ke dalam bahasa Indonesia:\n{s}",
    "vi": "Hãy dịch câu sau sang tiếng Việt:\n{s}",
    "th": "แปลประโยคต่อไปนี้เป็นภาษาไทย:\n{s}",
    "ta": "பின்வரும் வாக்கியத்தைத் தமிழில் மொழிபெயர்க்கவும்:\n{s}",
    "tl": "Isalin sa Filipino ang sumusunod na pangungusap:\n{s}",
    "ja": "次の文を日本語に翻訳してください。\n{s}",
}
LANGUAGE_NAME_EN = {"id": "Indonesian", "vi": "Vietnamese", "th": "Thai", "ta": "Tamil", "tl": "Filipino",
                    "ja": "Japanese"}

# --- capitals (single- and two-turn) --------------------------------------------------------------

# (country as used in the question, capital); Tamil keeps the genitive form the question needs.
CAPITALS = {
    "en": [("Indonesia", "Jakarta"), ("Vietnam", "Hanoi"), ("Thailand", "Bangkok"),
           ("the Philippines", "Manila"), ("Japan", "Tokyo"), ("Malaysia", "Kuala Lumpur")],
    "id": [("Indonesia", "Jakarta"), ("Vietnam", "Hanoi"), ("Thailand", "Bangkok"),
           ("Filipina", "Manila"), ("Jepang", "Tokyo"), ("Malaysia", "Kuala Lumpur")],
    "vi": [("Indonesia", "Jakarta"), ("Việt Nam", "Hà Nội"), ("Thái Lan", "Băng Cốc"),
           ("Philippines", "Manila"), ("Nhật Bản", "Tokyo"), ("Malaysia", "Kuala Lumpur")],
    "th": [("อินโดนีเซีย", "จาการ์ตา"), ("เวียดนาม", "ฮานอย"), ("ประเทศไทย", "กรุงเทพมหานคร"),
           ("ฟิลิปปินส์", "มะนิลา"), ("ญี่ปุ่น", "โตเกียว"), ("มาเลเซีย", "กัวลาลัมเปอร์")],
    "ta": [("இந்தோனேசியாவின்", "ஜகார்த்தா"), ("வியட்நாமின்", "ஹனோய்"), ("தாய்லாந்தின்", "பாங்காக்"),
           ("பிலிப்பைன்ஸின்", "மணிலா"), ("ஜப்பானின்", "டோக்கியோ"), ("மலேசியாவின்", "கோலாலம்பூர்")],
    "tl": [("Indonesia", "Jakarta"), ("Vietnam", "Hanoi"), ("Thailand", "Bangkok"),
           ("Pilipinas", "Maynila"), ("Hapon", "Tokyo"), ("Malaysia", "Kuala Lumpur")],
    "ja": [("インドネシア", "ジャカルタ"), ("ベトナム", "ハノイ"), ("タイ", "バンコク"),
           ("フィリピン", "マニラ"), ("日本", "東京"), ("マレーシア", "クアラルンプール")],
}
CAPITAL_QA = {
    "en": ("What is the capital of {c}?", "The capital of {c} is {k}."),
    "id": ("Apa ibu kota {c}?", "Ibu kota {c} adalah {k}."),
    "vi": ("Thủ đô của {c} là thành phố nào?", "Thủ đô của {c} là {k}."),
    "th": ("เมืองหลวงของ{c}คือเมืองอะไร", "เมืองหลวงของ{c}คือ{k}"),
    "ta": ("{c} தலைநகரம் எது?", "{c} தலைநகரம் {k}."),
    "tl": ("Ano ang kabisera ng {c}?", "Ang kabisera ng {c} ay {k}."),
    "ja": ("{c}の首都はどこですか。", "{c}の首都は{k}です。"),
}
ONE_WORD = {
    "en": "Answer again in one word.",
    "id": "Jawab lagi dengan satu kata saja.",
    "vi": "Hãy trả lời lại chỉ bằng một từ.",
    "th": "ช่วยตอบอีกครั้งด้วยคำเดียว",
    "ta": "ஒரே வார்த்தையில் மீண்டும் பதில் சொல்லுங்கள்.",
    "tl": "Sagutin muli sa isang salita lamang.",
    "ja": "一言でもう一度答えてください。",
}

# --- arithmetic word problems ---------------------------------------------------------------------

NAMES = {
    "en": ["Anna", "Ben", "Clara", "David"],
    "id": ["Ani", "Budi", "Siti", "Dewi"],
    "vi": ["Lan", "Minh", "Hoa", "Tuấn"],
    "th": ["มานี", "ปิติ", "ชูใจ", "วีระ"],
    # Tamil questions use the locative form ("with Kamala"): கமலாவிடம்.
    "ta": ["கமலாவிடம்", "ராஜாவிடம்", "மீனாவிடம்", "குமாரிடம்"],
    "tl": ["Maria", "Juan", "Ana", "Jose"],
    "ja": ["花子", "太郎", "さくら", "健太"],
}
# item: the noun as the templates need it; unit: its classifier or counter, where the language has one.
ITEMS = {
    "en": [("apples", ""), ("mangoes", ""), ("books", ""), ("pencils", "")],
    "id": [("apel", ""), ("mangga", ""), ("buku", ""), ("pensil", "")],
    "vi": [("táo", "quả"), ("xoài", "quả"), ("sách", "quyển"), ("bút chì", "cây")],
    "th": [("แอปเปิล", "ผล"), ("มะม่วง", "ผล"), ("หนังสือ", "เล่ม"), ("ดินสอ", "แท่ง")],
    "ta": [("ஆப்பிள்கள்", ""), ("மாம்பழங்கள்", ""), ("புத்தகங்கள்", ""), ("பென்சில்கள்", "")],
    "tl": [("mansanas", ""), ("mangga", ""), ("aklat", ""), ("lapis", "")],
    "ja": [("りんご", "個"), ("みかん", "個"), ("本", "冊"), ("鉛筆", "本")],
}

# Per language and operation: (question, answer, reasoning trace). Fields: n name, i item, u unit,
# a/b operands, c result, t/o tens/ones of b, x/y partial products.
PROBLEMS: dict[str, dict[str, tuple[str, str, str]]] = {
    "en": {
        "add": ("{n} has {a} {i} and buys {b} more. How many {i} does {n} have now?",
                "{n} now has {c} {i}.",
                "{n} starts with {a} {i} and gets {b} more, so I add: {a} + {b} = {c}. "
                "Check: {c} - {b} = {a}, which matches."),
        "sub": ("{n} has {a} {i} and gives {b} of them to a friend. How many {i} does {n} have left?",
                "{n} has {c} {i} left.",
                "{n} had {a} {i} and gave away {b}, so I subtract: {a} - {b} = {c}. Check: {c} + {b} = {a}."),
        "mul": ("There are {a} boxes, and each box holds {b} {i}. How many {i} are there in total?",
                "There are {c} {i} in total.",
                "There are {a} boxes with {b} {i} each, so I multiply: {a} × {b}. "
                "{a} × {t} = {x} and {a} × {o} = {y}, so {x} + {y} = {c}."),
    },
    "id": {
        "add": ("{n} punya {a} {i}, lalu membeli {b} {i} lagi. Berapa jumlah {i} {n} sekarang?",
                "Sekarang {n} punya {c} {i}.",
                "{n} awalnya punya {a} {i}, lalu membeli {b} lagi. Jadi saya menjumlahkan: {a} + {b} = {c}. "
                "Periksa: {c} - {b} = {a}, cocok."),
        "sub": ("{n} punya {a} {i} dan memberikan {b} {i} kepada temannya. Berapa {i} yang tersisa?",
                "Sisa {i} {n} ada {c}.",
                "{n} punya {a} {i} dan memberikan {b}, jadi saya mengurangkan: {a} - {b} = {c}. "
                "Periksa: {c} + {b} = {a}."),
        "mul": ("Ada {a} kotak, dan setiap kotak berisi {b} {i}. Berapa jumlah {i} seluruhnya?",
                "Jumlah {i} seluruhnya adalah {c}.",
                "Ada {a} kotak dengan {b} {i} di setiap kotak, jadi saya mengalikan: {a} × {b}. "
                "{a} × {t} = {x} dan {a} × {o} = {y}, sehingga {x} + {y} = {c}."),
    },
    "vi": {
        "add": ("{n} có {a} {u} {i} và mua thêm {b} {u} nữa. Hỏi bây giờ {n} có tất cả bao nhiêu {u} {i}?",
                "Bây giờ {n} có tất cả {c} {u} {i}.",
                "Ban đầu {n} có {a} {u} {i}, mua thêm {b} {u} nữa. Vậy ta cộng: {a} + {b} = {c}. "
                "Kiểm tra lại: {c} - {b} = {a}, đúng."),
        "sub": ("{n} có {a} {u} {i} và cho bạn {b} {u}. Hỏi {n} còn lại bao nhiêu {u} {i}?",
                "{n} còn lại {c} {u} {i}.",
                "{n} có {a} {u} {i} và cho đi {b} {u}, nên ta trừ: {a} - {b} = {c}. Kiểm tra: {c} + {b} = {a}."),
        "mul": ("Có {a} cái hộp, mỗi hộp đựng {b} {u} {i}. Hỏi có tất cả bao nhiêu {u} {i}?",
                "Có tất cả {c} {u} {i}.",
                "Có {a} hộp, mỗi hộp {b} {u}, nên ta nhân: {a} × {b}. "
                "{a} × {t} = {x} và {a} × {o} = {y}, vậy {x} + {y} = {c}."),
    },
    "th": {
        "add": ("{n}มี{i} {a} {u} แล้วซื้อเพิ่มอีก {b} {u} ตอนนี้{n}มี{i}ทั้งหมดกี่{u}",
                "ตอนนี้{n}มี{i}ทั้งหมด {c} {u}",
                "ตอนแรก{n}มี{i} {a} {u} ซื้อเพิ่มอีก {b} {u} จึงต้องบวกกัน: {a} + {b} = {c} "
                "ตรวจสอบ: {c} - {b} = {a} ถูกต้อง"),
        "sub": ("{n}มี{i} {a} {u} แล้วแบ่งให้เพื่อนไป {b} {u} {n}เหลือ{i}กี่{u}",
                "{n}เหลือ{i} {c} {u}",
                "{n}มี{i} {a} {u} และให้เพื่อนไป {b} {u} จึงต้องลบกัน: {a} - {b} = {c} "
                "ตรวจสอบ: {c} + {b} = {a}"),
        "mul": ("มีกล่อง {a} กล่อง แต่ละกล่องมี{i} {b} {u} รวมทั้งหมดมี{i}กี่{u}",
                "รวมทั้งหมดมี{i} {c} {u}",
                "มี {a} กล่อง กล่องละ {b} {u} จึงต้องคูณกัน: {a} × {b} โดย {a} × {t} = {x} "
                "และ {a} × {o} = {y} ดังนั้น {x} + {y} = {c}"),
    },
    "ta": {
        "add": ("{n} {a} {i} உள்ளன. அவர் மேலும் {b} {i} வாங்குகிறார். இப்போது {n} மொத்தம் எத்தனை {i} உள்ளன?",
                "இப்போது {n} மொத்தம் {c} {i} உள்ளன.",
                "முதலில் {n} {a} {i} இருந்தன. மேலும் {b} வாங்கப்பட்டன. எனவே கூட்டுகிறேன்: {a} + {b} = {c}. "
                "சரிபார்ப்பு: {c} - {b} = {a}, சரி."),
        "sub": ("{n} {a} {i} உள்ளன. அவர் தன் நண்பருக்கு {b} {i} கொடுக்கிறார். இப்போது {n} எத்தனை {i} மீதம் உள்ளன?",
                "இப்போது {n} {c} {i} மீதம் உள்ளன.",
                "{n} {a} {i} இருந்தன, அவற்றில் {b} கொடுக்கப்பட்டன. எனவே கழிக்கிறேன்: {a} - {b} = {c}. "
                "சரிபார்ப்பு: {c} + {b} = {a}."),
        "mul": ("{a} பெட்டிகள் உள்ளன. ஒவ்வொரு பெட்டியிலும் {b} {i} உள்ளன. மொத்தம் எத்தனை {i} உள்ளன?",
                "மொத்தம் {c} {i} உள்ளன.",
                "{a} பெட்டிகள், ஒவ்வொன்றிலும் {b} {i}. எனவே பெருக்குகிறேன்: {a} × {b}. "
                "{a} × {t} = {x}, {a} × {o} = {y}, ஆகவே {x} + {y} = {c}."),
    },
    "tl": {
        "add": ("May {a} {i} si {n}. Bumili pa siya ng {b}. Ilan na lahat ang {i} ni {n}?",
                "May {c} {i} na si {n}.",
                "Sa simula, may {a} {i} si {n}. Bumili pa siya ng {b}, kaya pagsasamahin ko: {a} + {b} = {c}. "
                "Suriin: {c} - {b} = {a}, tama."),
        "sub": ("May {a} {i} si {n}. Ibinigay niya ang {b} sa kaibigan niya. Ilan ang natirang {i} kay {n}?",
                "{c} {i} ang natira kay {n}.",
                "May {a} {i} si {n} at ibinigay niya ang {b}, kaya ibabawas ko: {a} - {b} = {c}. "
                "Suriin: {c} + {b} = {a}."),
        "mul": ("May {a} kahon, at may {b} {i} ang bawat kahon. Ilan lahat ang {i}?",
                "May {c} {i} lahat.",
                "May {a} kahon na may tig-{b} {i}, kaya imu-multiply ko: {a} × {b}. "
                "{a} × {t} = {x} at {a} × {o} = {y}, kaya {x} + {y} = {c}."),
    },
    "ja": {
        "add": ("{n}さんは{i}を{a}{u}持っています。さらに{b}{u}買いました。{i}は全部で何{u}になりましたか。",
                "{i}は全部で{c}{u}です。",
                "最初に{a}{u}あり、さらに{b}{u}買ったので、足し算をします。{a} + {b} = {c}。"
                "確認: {c} - {b} = {a} なので正しいです。"),
        "sub": ("{n}さんは{i}を{a}{u}持っています。友だちに{b}{u}あげました。{i}は何{u}残っていますか。",
                "{i}は{c}{u}残っています。",
                "{a}{u}のうち{b}{u}をあげたので、引き算をします。{a} - {b} = {c}。確認: {c} + {b} = {a}。"),
        "mul": ("箱が{a}個あり、それぞれの箱に{i}が{b}{u}入っています。{i}は全部で何{u}ありますか。",
                "{i}は全部で{c}{u}あります。",
                "{a}箱に{b}{u}ずつ入っているので、掛け算をします。{a} × {t} = {x}、{a} × {o} = {y}、"
                "合わせて {x} + {y} = {c}。"),
    },
}
# "Calculate a × b + c": (question, answer, trace).
EXPRESSION = {
    "en": ("Calculate {e}.", "The result is {r}.",
           "Multiplication comes before addition. First {a} × {b} = {m}. Then {m} + {c} = {r}."),
    "id": ("Hitunglah {e}.", "Hasilnya adalah {r}.",
           "Perkalian dikerjakan sebelum penjumlahan. Pertama {a} × {b} = {m}. Lalu {m} + {c} = {r}."),
    "vi": ("Hãy tính {e}.", "Kết quả là {r}.",
           "Phép nhân được thực hiện trước phép cộng. Trước hết {a} × {b} = {m}. Sau đó {m} + {c} = {r}."),
    "th": ("จงหาค่าของ {e}", "ผลลัพธ์คือ {r}",
           "ต้องคูณก่อนบวก ขั้นแรก {a} × {b} = {m} จากนั้น {m} + {c} = {r}"),
    "ta": ("{e} இன் மதிப்பைக் கணக்கிடுங்கள்.", "விடை {r}.",
           "கூட்டலுக்கு முன் பெருக்கல் செய்ய வேண்டும். முதலில் {a} × {b} = {m}. பிறகு {m} + {c} = {r}."),
    "tl": ("Kalkulahin ang {e}.", "Ang sagot ay {r}.",
           "Inuuna ang multiplication bago ang addition. Una, {a} × {b} = {m}. Pagkatapos, {m} + {c} = {r}."),
    "ja": ("{e} を計算してください。", "答えは{r}です。",
           "足し算より先に掛け算をします。まず {a} × {b} = {m}。次に {m} + {c} = {r}。"),
}
# Second turn after an addition problem: (question, answer, trace). d: added, e: new total.
FOLLOW_UP = {
    "en": ("And if {n} buys {d} more after that, how many {i} will there be?", "There will be {e} {i}.",
           "Before there were {c}, and {d} more are added: {c} + {d} = {e}."),
    "id": ("Kalau setelah itu {n} membeli {d} {i} lagi, ada berapa {i}?", "Akan ada {e} {i}.",
           "Sebelumnya ada {c}, ditambah {d}: {c} + {d} = {e}."),
    "vi": ("Nếu sau đó {n} mua thêm {d} {u} nữa thì có bao nhiêu {u} {i}?", "Khi đó sẽ có {e} {u} {i}.",
           "Trước đó có {c}, thêm {d}: {c} + {d} = {e}."),
    "th": ("ถ้าหลังจากนั้น{n}ซื้อเพิ่มอีก {d} {u} จะมี{i}กี่{u}", "จะมี{i} {e} {u}",
           "ก่อนหน้านี้มี {c} {u} เพิ่มอีก {d}: {c} + {d} = {e}"),
    "ta": ("அதன் பிறகு அவர் மேலும் {d} {i} வாங்கினால், மொத்தம் எத்தனை {i} இருக்கும்?",
           "மொத்தம் {e} {i} இருக்கும்.", "முன்பு {c} இருந்தன, மேலும் {d}: {c} + {d} = {e}."),
    "tl": ("Kung bibili pa si {n} ng {d} pagkatapos, ilan na lahat ang {i}?", "Magiging {e} na lahat ang {i}.",
           "Dati ay {c}, dagdag ang {d}: {c} + {d} = {e}."),
    "ja": ("そのあと{n}さんがさらに{d}{u}買うと、{i}は何{u}になりますか。", "{i}は{e}{u}になります。",
           "さっきの{c}{u}に{d}{u}を足します。{c} + {d} = {e}。"),
}
# Distilled R1 traces often reason in English whatever the prompt's language.
ENGLISH_TRACE = {
    "add": "We start with {a} and add {b}: {a} + {b} = {c}. Check: {c} - {b} = {a}.",
    "sub": "We start with {a} and take away {b}: {a} - {b} = {c}. Check: {c} + {b} = {a}.",
    "mul": "{a} groups of {b}: {a} × {t} = {x}, {a} × {o} = {y}, and {x} + {y} = {c}.",
}

OPEN_PROMPTS = {
    "en": ["Write a short poem about the rainy season.", "Explain why it is important to drink enough water.",
           "Give three tips for learning a new language."],
    "id": ["Tulislah puisi pendek tentang musim hujan.", "Jelaskan mengapa penting untuk minum cukup air.",
           "Berikan tiga tips untuk belajar bahasa baru."],
    "vi": ["Hãy viết một bài thơ ngắn về mùa mưa.", "Hãy giải thích vì sao uống đủ nước lại quan trọng.",
           "Hãy đưa ra ba mẹo để học một ngôn ngữ mới."],
    "th": ["จงแต่งกลอนสั้น ๆ เกี่ยวกับฤดูฝน", "จงอธิบายว่าทำไมการดื่มน้ำให้เพียงพอจึงสำคัญ",
           "จงให้คำแนะนำสามข้อสำหรับการเรียนภาษาใหม่"],
    "ta": ["மழைக்காலத்தைப் பற்றி ஒரு சிறு கவிதை எழுதுங்கள்.",
           "போதுமான அளவு தண்ணீர் குடிப்பது ஏன் முக்கியம் என்பதை விளக்குங்கள்.",
           "புதிய மொழியைக் கற்க மூன்று குறிப்புகளைக் கொடுங்கள்."],
    "tl": ["Sumulat ng maikling tula tungkol sa tag-ulan.", "Ipaliwanag kung bakit mahalagang uminom ng sapat na tubig.",
           "Magbigay ng tatlong payo sa pag-aaral ng bagong wika."],
    "ja": ["雨季について短い詩を書いてください。", "十分な水を飲むことがなぜ大切なのか説明してください。",
           "新しい言語を学ぶためのコツを三つ教えてください。"],
}


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _assistant(text: str, trace: str | None = None, *, inline: bool = False) -> dict[str, Any]:
    if trace is None:
        return {"role": "assistant", "content": text}
    if inline:
        # R1-style: the trace inside the answer, as raw distilled completions carry it.
        return {"role": "assistant", "content": f"{THINK_OPEN}\n{trace}\n{THINK_CLOSE}\n\n{text}"}
    return {"role": "assistant", "content": text, "reasoning_content": trace}


def _with_system(rng: random.Random, lang: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if rng.random() < 0.25:
        return [{"role": "system", "content": SYSTEM[lang]}, *messages]
    return messages


# --- the three files ------------------------------------------------------------------------------


def instruct_rows(rng: random.Random) -> Iterator[dict[str, Any]]:
    """Sentiment, translation and capitals in every language; no reasoning."""
    for lang in LANGUAGES:
        labels = SENTIMENT_LABELS[lang]
        for polarity, sentences in enumerate(SENTIMENT[lang]):
            for sentence in sentences:
                messages = [_user(SENTIMENT_PROMPT[lang].format(s=sentence)), _assistant(labels[polarity])]
                yield {"messages": _with_system(rng, lang, messages), "language": lang}
    for lang, template in TRANSLATE_INTO.items():
        for english, target in zip(PARALLEL["en"], PARALLEL[lang], strict=True):
            yield {"messages": _with_system(rng, lang, [_user(template.format(s=english)), _assistant(target)]),
                   "language": lang}
            back = f"Translate this {LANGUAGE_NAME_EN[lang]} sentence into English:\n{target}"
            yield {"messages": _with_system(rng, "en", [_user(back), _assistant(english)]), "language": "en"}
    for lang in LANGUAGES:
        question, answer = CAPITAL_QA[lang]
        for country, capital in CAPITALS[lang]:
            q, a = question.format(c=country), answer.format(c=country, k=capital)
            yield {"messages": _with_system(rng, lang, [_user(q), _assistant(a)]), "language": lang}
            two_turns = [_user(q), _assistant(a), _user(ONE_WORD[lang]), _assistant(capital)]
            yield {"messages": _with_system(rng, lang, two_turns), "language": lang}


def _problem(rng: random.Random, lang: str, op: str) -> tuple[str, str, str, int, dict[str, Any]]:
    """(question, answer text, trace, numeric answer, fields) for one random word problem."""
    item, unit = rng.choice(ITEMS[lang])
    fields: dict[str, Any] = {"n": rng.choice(NAMES[lang]), "i": item, "u": unit}
    if op == "add":
        a, b = rng.randint(5, 60), rng.randint(2, 40)
        c = a + b
    elif op == "sub":
        a = rng.randint(20, 90)
        b = rng.randint(1, a - 1)
        c = a - b
    else:
        a, b = rng.randint(2, 9), rng.choice([n for n in range(12, 50) if n % 10])
        c = a * b
        fields.update(t=b - b % 10, o=b % 10, x=a * (b - b % 10), y=a * (b % 10))
    fields.update(a=a, b=b, c=c)
    question, answer, trace = PROBLEMS[lang][op]
    if lang != "en" and rng.random() < 0.2:
        trace = ENGLISH_TRACE[op]
    return question.format(**fields), answer.format(**fields), trace.format(**fields), c, fields


def reasoning_rows(rng: random.Random) -> Iterator[dict[str, Any]]:
    """Arithmetic with traces: word problems, expressions and two-turn follow-ups."""
    for lang in LANGUAGES:
        for k in range(18):
            op = ("add", "sub", "mul")[k % 3]
            question, answer, trace, value, _ = _problem(rng, lang, op)
            inline = rng.random() < 0.3
            yield {"messages": [_user(question), _assistant(answer, trace, inline=inline)],
                   "language": lang, "answer": str(value)}
        for _ in range(6):
            a, b, c = rng.randint(2, 12), rng.randint(2, 12), rng.randint(1, 50)
            fields = {"a": a, "b": b, "c": c, "m": a * b, "r": a * b + c, "e": f"{a} × {b} + {c}"}
            question, answer, trace = (t.format(**fields) for t in EXPRESSION[lang])
            inline = rng.random() < 0.3
            yield {"messages": [_user(question), _assistant(answer, trace, inline=inline)],
                   "language": lang, "answer": str(a * b + c)}
        for _ in range(4):
            question, answer, trace, value, fields = _problem(rng, lang, "add")
            d = rng.randint(2, 20)
            fields.update(d=d, e=value + d)
            q2, a2, t2 = (t.format(**fields) for t in FOLLOW_UP[lang])
            messages = [_user(question), _assistant(answer, trace), _user(q2), _assistant(a2, t2)]
            yield {"messages": messages, "language": lang, "answer": str(value + d)}


def prompt_rows(rng: random.Random) -> Iterator[dict[str, Any]]:
    """Prompts for sampling: arithmetic (verifiable), sentiment (labelled) and open questions."""
    for lang in LANGUAGES:
        for k in range(12):
            question, _, _, value, _ = _problem(rng, lang, ("add", "sub", "mul")[k % 3])
            yield {"messages": [_user(question)], "language": lang, "answer": str(value)}
        for _ in range(3):
            a, b, c = rng.randint(2, 12), rng.randint(2, 12), rng.randint(1, 50)
            question = EXPRESSION[lang][0].format(e=f"{a} × {b} + {c}")
            yield {"messages": [_user(question)], "language": lang, "answer": str(a * b + c)}
        labels = SENTIMENT_LABELS[lang]
        for polarity, sentences in enumerate(SENTIMENT[lang]):
            for sentence in sentences[:2]:
                yield {"messages": [_user(SENTIMENT_PROMPT[lang].format(s=sentence))], "language": lang,
                       "answer": labels[polarity]}
        for prompt in OPEN_PROMPTS[lang]:
            yield {"messages": [_user(prompt)], "language": lang, "answer": None}


FILES: dict[str, Callable[[random.Random], Iterator[dict[str, Any]]]] = {
    "sample_instruct.jsonl": instruct_rows,
    "sample_reasoning.jsonl": reasoning_rows,
    "sample_prompts.jsonl": prompt_rows,
}


def render(name: str) -> str:
    """The full text of one file; each file has its own seeded stream, so they change independently."""
    rng = random.Random(f"{SEED}-{name}")
    rows = list(FILES[name](rng))
    rng.shuffle(rows)
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: this folder)")
    parser.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name in FILES:
        text, path = render(name), args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8", newline="\n")
            print(f"wrote {path} ({text.count(chr(10))} rows, {len(text.encode()) / 1024:.0f} KiB)")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
