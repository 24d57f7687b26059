"""Converters from published dataset metadata to the manifest: one small file per format, read back."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from bridgebench.datamodules.convert import CONVERTERS, convert
from bridgebench.datamodules.manifest import ManifestError, read_manifest, write_manifest


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def _run(tmp_path, fmt, source, **kwargs):
    out = tmp_path / "out" / f"{fmt}.jsonl"
    counts = convert(fmt, str(source), str(out), **kwargs)
    clips = read_manifest(str(out))
    assert counts["rows"] == len(clips)
    return counts, {c.id: c for c in clips}, [json.loads(line) for line in out.read_text().splitlines()]


def _audio(clip):
    return os.path.normpath(clip.audio)


def test_every_format_has_a_converter():
    assert sorted(CONVERTERS) == sorted(
        [
            "musiccaps",
            "song-describer",
            "youtube8m-musictextclips",
            "lp-musiccaps",
            "musicinstruct",
            "musicqa",
            "clotho",
            "audiocaps",
            "wavcaps",
            "gtzan",
            "nsynth",
            "openmic",
            "fma",
        ]
    )


MUSICCAPS = """ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,is_balanced_subset,is_audioset_eval
-0Gj8-vB1q4,30,40,"/m/0140xf,/m/02cjck,/m/04rlf","['low quality', 'sustained strings melody', 'soft female vocal']","The low quality recording features a ballad song that contains sustained strings.",4,False,True
-0SdAVK79lg,30,40,"/m/0155w,/m/01lyv,/m/0342h","['guitar song', 'piano backing', 'simple percussion']","This song features an electric guitar as the main instrument.",0,True,False
-0vPFx-wRRI,30,40,/m/025_jnm,"['amateur recording']",,6,False,False
"""


def test_musiccaps(tmp_path):
    src = _write(tmp_path / "musiccaps-public.csv", MUSICCAPS)
    counts, clips, raw = _run(tmp_path, "musiccaps", src, audio_root=str(tmp_path / "audio"))
    assert counts == {"rows": 2, "skipped": 1, "reasons": {"empty caption": 1}}
    a, b = clips["-0Gj8-vB1q4"], clips["-0SdAVK79lg"]
    assert a.split == "test" and b.split == "train"
    assert _audio(a) == str(tmp_path / "audio" / "-0Gj8-vB1q4.wav")
    assert raw[0]["audio"] == "../audio/-0Gj8-vB1q4.wav"  # relative to the manifest's folder
    assert (a.start, a.end) == (30.0, 40)
    assert a.captions == ["The low quality recording features a ballad song that contains sustained strings."]
    assert a.tags == ["low quality", "sustained strings melody", "soft female vocal"]
    assert raw[1]["meta"] == {"is_balanced_subset": True}
    # Clips already cut to 10 s: times only in meta; a pattern and a forced split
    _, clips, raw = _run(
        tmp_path, "musiccaps", src, audio_pattern="clips/{ytid}_{start_s}.flac", split="val", trimmed=True
    )
    assert all(c.split == "val" and c.start == 0.0 and c.end is None for c in clips.values())
    assert _audio(clips["-0SdAVK79lg"]) == str(tmp_path / "clips" / "-0SdAVK79lg_30.flac")
    assert raw[0]["meta"]["source_time"] == [30, 40]


def test_song_describer_groups_captions_per_track(tmp_path):
    src = _write(
        tmp_path / "sdd" / "song_describer.csv",
        """caption_id,track_id,caption,is_valid_subset,familiarity,artist_id,album_id,path,duration
11,1051198,"A mellow solo piano piece, slow and quiet.",True,0,496019,122910,98/1051198.mp3,211.2
12,1051198,Gentle piano with a melancholic mood.,False,1,496019,122910,98/1051198.mp3,211.2
13,18500,Upbeat electronic track with a driving beat.,True,2,3491,2043,00/18500.mp3,180.0
14,18500,  ,True,2,3491,2043,00/18500.mp3,180.0
""",
    )
    counts, clips, raw = _run(tmp_path, "song-describer", src)
    assert counts == {"rows": 2, "skipped": 1, "reasons": {"empty caption": 1}}
    piano = clips["1051198"]
    assert piano.captions == ["A mellow solo piano piece, slow and quiet.", "Gentle piano with a melancholic mood."]
    assert piano.split == "test"
    assert _audio(piano) == str(tmp_path / "sdd" / "audio" / "98" / "1051198.2min.mp3")
    assert raw[0]["meta"] == {"caption_ids": ["11", "12"], "is_valid_subset": [True, False]}
    counts, clips, _ = _run(tmp_path, "song-describer", src, valid_only=True)
    assert clips["1051198"].captions == ["A mellow solo piano piece, slow and quiet."]
    assert counts["reasons"] == {"empty caption": 1, "not in the valid subset": 1}


def test_youtube8m_musictextclips(tmp_path):
    src = _write(
        tmp_path / "yt8m" / "test.csv",
        """video_id,start,end,text
eMYg_9JR0F8,115,125,"Energetic rock song with distorted guitars, loud drums and a male singer."
Zq3Xy1Lr-kA,60.5,70.5,A calm acoustic guitar melody with soft humming.
""",
    )
    counts, clips, _ = _run(tmp_path, "youtube8m-musictextclips", src)
    assert counts == {"rows": 2, "skipped": 0, "reasons": {}}
    clip = clips["Zq3Xy1Lr-kA"]
    assert clip.split == "test" and (clip.start, clip.end) == (60.5, 70.5)
    assert clip.captions == ["A calm acoustic guitar melody with soft humming."]
    assert _audio(clip) == str(tmp_path / "yt8m" / "Zq3Xy1Lr-kA.wav")
    # the file name says nothing about the split: the user must
    other = _write(tmp_path / "yt8m" / "clips.csv", (tmp_path / "yt8m" / "test.csv").read_text())
    with pytest.raises(ValueError, match="cannot tell the split"):
        convert("youtube8m-musictextclips", other, str(tmp_path / "x.jsonl"))
    assert _run(tmp_path, "youtube8m-musictextclips", other, split="train")[1]["eMYg_9JR0F8"].split == "train"


LP_ROW = {
    "track_id": "TRIHXPZ128F1466744",
    "title": "In The Sunshine",
    "artist_name": "ARRESTED DEVELOPMENT",
    "release": "Zingalamaduni",
    "year": 1994,
    "tag": ["laid back mellow", "hip hop", "rnb"],
    "caption_writing": "An amiable and laid back alternative rap tune.",
    "caption_summary": "This summery, alternative rap song is a mellow blend of hip hop.",
    "caption_paraphrase": "This laid back mellow rap song infuses soulful and urban elements.",
    "caption_attribute_prediction": "This mellow track combines elements of hip hop and R&B.",
    "path": "2/7/TRIHXPZ128F1466744.clip.mp3",
}


def test_lp_musiccaps_jsonl_json_and_csv(tmp_path):
    empty = dict(
        LP_ROW,
        track_id="TRAAAAV128F421A322",
        caption_writing="",
        caption_summary="",
        caption_paraphrase="",
        caption_attribute_prediction="",
    )
    src = _write(
        tmp_path / "lp" / "lp_music_caps_msd_test.json", "\n".join(json.dumps(r) for r in (LP_ROW, empty)) + "\n"
    )
    counts, clips, raw = _run(tmp_path, "lp-musiccaps", src, audio_root=str(tmp_path / "msd"))
    assert counts == {"rows": 1, "skipped": 1, "reasons": {"empty caption": 1}}
    clip = clips["TRIHXPZ128F1466744"]
    assert clip.split == "test"  # from the file name
    assert clip.captions == [
        LP_ROW[c] for c in ("caption_writing", "caption_summary", "caption_paraphrase", "caption_attribute_prediction")
    ]
    assert raw[0]["meta"]["caption_columns"] == [
        "caption_writing",
        "caption_summary",
        "caption_paraphrase",
        "caption_attribute_prediction",
    ]
    assert clip.tags == ["laid back mellow", "hip hop", "rnb"]
    assert _audio(clip) == str(tmp_path / "msd" / "2" / "7" / "TRIHXPZ128F1466744.clip.mp3")
    # MusiLingo's choice: only caption_writing; a {"train": [...]} JSON document
    src = _write(tmp_path / "lp" / "msd.json", json.dumps({"train": [LP_ROW]}))
    _, clips, raw = _run(tmp_path, "lp-musiccaps", src, columns="caption_writing")
    assert clips["TRIHXPZ128F1466744"].captions == [LP_ROW["caption_writing"]]
    assert clips["TRIHXPZ128F1466744"].split == "train" and raw[0]["meta"]["caption_columns"] == ["caption_writing"]
    # MC as CSV (pandas export: lists as Python literals), split from is_audioset_eval
    src = _write(
        tmp_path / "lp" / "mc.csv",
        """ytid,aspect_list,caption_ground_truth,caption_writing,caption_summary,caption_paraphrase,caption_attribute_prediction,start_s,end_s,is_audioset_eval
-0Gj8-vB1q4,"['low quality', 'sustained strings melody']",Ground truth.,Writing.,Summary.,Paraphrase.,Attribute.,30,40,True
""",
    )
    _, clips, _ = _run(tmp_path, "lp-musiccaps", src, columns=["caption_summary", "caption_ground_truth"])
    clip = clips["-0Gj8-vB1q4"]
    assert clip.captions == ["Summary.", "Ground truth."] and clip.split == "test"
    assert clip.tags == ["low quality", "sustained strings melody"] and (clip.start, clip.end) == (30.0, 40)
    assert _audio(clip) == str(tmp_path / "lp" / "-0Gj8-vB1q4.wav")
    with pytest.raises(ValueError, match="unknown caption column 'caption_x'"):
        convert("lp-musiccaps", src, str(tmp_path / "x.jsonl"), columns="caption_x")
    # LP-MusicCaps-MC as their eval.py reads it: clips whose audio was not crawled are left out
    mc = [{"ytid": f"y{k}", "aspect_list": ["rock"], "caption_ground_truth": f"Truth {k}.", "is_audioset_eval": True,
           "is_crawled": crawled} for k, crawled in enumerate([True, False, "True"])]
    src = _write(tmp_path / "lp" / "mc.json", json.dumps(mc))
    counts, clips, _ = _run(tmp_path, "lp-musiccaps", src, columns="caption_ground_truth")
    assert sorted(clips) == ["y0", "y2"] and counts["reasons"] == {"not crawled (is_crawled false)": 1}


def test_musicinstruct_groups_pairs_per_clip(tmp_path):
    qa = [
        {
            "question": "What is the tempo of the song?",
            "answer": "The tempo is slow.",
            "ytid": "-0Gj8-vB1q4",
            "is_audioset_eval": True,
            "sampling_rate": 48000,
            "caption": "The low quality recording...",
        },
        {
            "question": "Which instruments are playing?",
            "answer": "Strings and a female voice.",
            "ytid": "-0Gj8-vB1q4",
            "is_audioset_eval": True,
            "sampling_rate": 48000,
            "caption": "The low quality recording...",
        },
        {
            "question": "Describe the mood.",
            "answer": "Cheerful.",
            "ytid": "-0SdAVK79lg",
            "is_audioset_eval": False,
            "sampling_rate": 48000,
            "caption": "This song features an electric guitar...",
        },
        {"question": "Is there a singer?", "answer": "", "ytid": "-0SdAVK79lg", "is_audioset_eval": False},
    ]
    src = _write(tmp_path / "MusicInstruct" / "music_instruct_short.json", json.dumps({"QA": qa}, indent=1))
    counts, clips, _ = _run(tmp_path, "musicinstruct", src, audio_root=str(tmp_path / "MusicCaps_audio"))
    assert counts == {"rows": 2, "skipped": 1, "reasons": {"empty answer": 1}}
    clip = clips["-0Gj8-vB1q4"]
    assert clip.split == "test" and clips["-0SdAVK79lg"].split == "train"
    assert clip.qa == [
        {"instruction": "What is the tempo of the song?", "answer": "The tempo is slow."},
        {"instruction": "Which instruments are playing?", "answer": "Strings and a female voice."},
    ]
    assert _audio(clip) == str(tmp_path / "MusicCaps_audio" / "-0Gj8-vB1q4.wav")


def test_musicqa_groups_conversations_per_audio(tmp_path):
    items = [
        {
            "audio_name": "IbpBKcZh9tc.wav",
            "conversation": [
                {"from": "human", "value": "What is the genre of this music?"},
                {"from": "gpt", "value": "It is a jazz piece."},
            ],
        },
        {
            "audio_name": "IbpBKcZh9tc.wav",
            "conversation": [
                {"from": "human", "value": "Which instrument leads?"},
                {"from": "gpt", "value": "A saxophone."},
                {"from": "human", "value": "Is it fast?"},
                {"from": "gpt", "value": "No, it is relaxed."},
            ],
        },
        {
            "audio_name": "MTT_ab12.wav",
            "conversation": [{"from": "human", "value": "Describe it."}, {"from": "gpt", "value": " "}],
        },
    ]
    src = _write(tmp_path / "MusicQA" / "EvalMusicQA.json", json.dumps(items))
    counts, clips, _ = _run(tmp_path, "musicqa", src)
    assert counts == {"rows": 1, "skipped": 1, "reasons": {"no question/answer pair with text": 1}}
    clip = clips["IbpBKcZh9tc"]
    assert clip.split == "test"
    assert [p["instruction"] for p in clip.qa] == [
        "What is the genre of this music?",
        "Which instrument leads?",
        "Is it fast?",
    ]
    assert clip.qa[2]["answer"] == "No, it is relaxed."
    assert _audio(clip) == str(tmp_path / "MusicQA" / "audios" / "IbpBKcZh9tc.wav")
    src = _write(tmp_path / "MusicQA" / "FinetuneMusicQA.json", json.dumps(items[:1]))
    assert _run(tmp_path, "musicqa", src)[1]["IbpBKcZh9tc"].split == "train"


def test_clotho_split_from_file_name(tmp_path):
    src = _write(
        tmp_path / "clotho" / "clotho_captions_validation.csv",
        """file_name,caption_1,caption_2,caption_3,caption_4,caption_5
"Santa Motor, engine.wav",A machine whines and squeals while rhythmically punching.,A motor is running loudly.,An engine hums.,Someone revs a motor.,A machine squeals.
Rain.wav,Rain falls on a roof.,Heavy rain pours down.,,Water drips steadily.,Rain patters outside.
Empty.wav,,,,,
""",
    )
    counts, clips, _ = _run(tmp_path, "clotho", src)
    assert counts == {"rows": 2, "skipped": 1, "reasons": {"empty caption": 1}}
    motor = clips["Santa Motor, engine"]
    assert motor.split == "val" and len(motor.captions) == 5
    assert _audio(motor) == str(tmp_path / "clotho" / "validation" / "Santa Motor, engine.wav")
    assert clips["Rain"].captions == [
        "Rain falls on a roof.",
        "Heavy rain pours down.",
        "Water drips steadily.",
        "Rain patters outside.",
    ]
    dev = _write(
        tmp_path / "clotho" / "clotho_captions_development.csv",
        (tmp_path / "clotho" / "clotho_captions_validation.csv").read_text(),
    )
    assert _run(tmp_path, "clotho", dev)[1]["Rain"].split == "train"
    ev = _write(
        tmp_path / "clotho" / "clotho_captions_evaluation.csv",
        (tmp_path / "clotho" / "clotho_captions_validation.csv").read_text(),
    )
    assert _run(tmp_path, "clotho", ev)[1]["Rain"].split == "test"


def test_audiocaps_groups_captions_per_clip(tmp_path):
    src = _write(
        tmp_path / "audiocaps" / "val.csv",
        """audiocap_id,youtube_id,start_time,caption
97151,vfY_TJq7n_U,130,Rustling occurs ducks quack and water splashes followed by an adult female and adult male speaking
97152,vfY_TJq7n_U,130,Ducks quack and water splashes
97153,7fmOlUlwoNg,20,A vehicle engine revving then accelerating
""",
    )
    counts, clips, raw = _run(tmp_path, "audiocaps", src)
    assert counts == {"rows": 2, "skipped": 0, "reasons": {}}
    ducks = clips["vfY_TJq7n_U_130"]
    assert ducks.split == "val" and len(ducks.captions) == 2
    assert (ducks.start, ducks.end) == (0.0, 10)
    assert _audio(ducks) == str(tmp_path / "audiocaps" / "vfY_TJq7n_U_130.flac")
    assert raw[0]["meta"] == {"audiocap_ids": ["97151", "97152"]}
    _, clips, _ = _run(tmp_path, "audiocaps", src, audio_pattern="{youtube_id}.wav", trimmed=False)
    assert (clips["7fmOlUlwoNg_20"].start, clips["7fmOlUlwoNg_20"].end) == (20.0, 30)
    assert _audio(clips["7fmOlUlwoNg_20"]) == str(tmp_path / "audiocaps" / "7fmOlUlwoNg.wav")


def test_wavcaps(tmp_path):
    data = {
        "num_captions_per_audio": 1,
        "data": [
            {
                "title": "Airplane Landing Airport",
                "description": "Large commercial airplane landing.",
                "author": "Daniel Simion",
                "href": "2219-Airplane-Landing-Airport.html",
                "caption": "An airplane is landing.",
                "id": "2219",
                "duration": 14.14,
                "audio": "wav_path",
                "download_link": "http://soundbible.com/grab.php?id=2219&type=wav",
            },
            {"id": "Y7fmOlUlwoNg.wav", "caption": "A vehicle engine revs.", "audio": "wav_path", "duration": 10.0},
            {"id": "2218", "caption": "", "duration": 1.5},
        ],
    }
    src = _write(tmp_path / "WavCaps" / "json_files" / "SoundBible" / "sb_final.json", json.dumps(data))
    counts, clips, _ = _run(tmp_path, "wavcaps", src, audio_root=str(tmp_path / "WavCaps" / "Audio" / "SoundBible"))
    assert counts == {"rows": 2, "skipped": 1, "reasons": {"empty caption": 1}}
    assert clips["2219"].captions == ["An airplane is landing."] and clips["2219"].split == "train"
    assert _audio(clips["2219"]) == str(tmp_path / "WavCaps" / "Audio" / "SoundBible" / "2219.flac")
    assert _audio(clips["Y7fmOlUlwoNg"]).endswith("Y7fmOlUlwoNg.flac")


def _gtzan(tmp_path, genres=("blues", "jazz"), n=10):
    root = tmp_path / "gtzan" / "genres"
    for g in genres:
        (root / g).mkdir(parents=True)
        for i in range(n):
            (root / g / f"{g}.{i:05d}.wav").write_bytes(b"")
    return tmp_path / "gtzan"


def test_gtzan_seeded_split(tmp_path):
    src = _gtzan(tmp_path)
    (src / "genres" / "jazz" / "jazz.00099.au.bak").write_bytes(b"")  # not audio: ignored
    counts, clips, _ = _run(tmp_path, "gtzan", src)
    assert counts == {"rows": 20, "skipped": 0, "reasons": {}}
    clip = clips["blues.00003"]
    assert clip.labels == {"genre": "blues"} and clip.tags == ["blues"] and clip.captions == []
    assert _audio(clip) == str(src / "genres" / "blues" / "blues.00003.wav")
    for g in ("blues", "jazz"):
        splits = [c.split for c in clips.values() if c.labels["genre"] == g]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (8, 1, 1)
    again = _run(tmp_path, "gtzan", src)[1]
    assert {k: c.split for k, c in again.items()} == {k: c.split for k, c in clips.items()}  # deterministic
    other = _run(tmp_path, "gtzan", src, seed=1)[1]
    assert {k: c.split for k, c in other.items()} != {k: c.split for k, c in clips.items()}


def test_gtzan_fault_filtered_lists(tmp_path):
    src = _gtzan(tmp_path, n=4)
    _write(src / "train_filtered.txt", "blues/blues.00000.wav\nblues/blues.00001.wav\njazz/jazz.00000.wav\n")
    _write(src / "valid_filtered.txt", "blues/blues.00002.wav\n")
    _write(src / "test_filtered.txt", "jazz/jazz.00001.wav\njazz/jazz.00002.wav\n")
    counts, clips, _ = _run(tmp_path, "gtzan", src)
    assert counts == {"rows": 6, "skipped": 2, "reasons": {"not in the GTZAN split lists": 2}}
    assert [clips[k].split for k in ("blues.00000", "blues.00002", "jazz.00002")] == ["train", "val", "test"]
    (src / "test_filtered.txt").unlink()
    with pytest.raises(ManifestError, match="test_filtered.txt: missing GTZAN split list"):
        convert("gtzan", str(src), str(tmp_path / "x.jsonl"))


def test_nsynth(tmp_path):
    examples = {
        "keyboard_acoustic_004-060-025": {
            "note_str": "keyboard_acoustic_004-060-025",
            "sample_rate": 16000,
            "qualities_str": ["dark", "reverb"],
            "instrument_source": 0,
            "instrument_family_str": "keyboard",
            "instrument_family": 4,
            "note": 278915,
            "instrument_source_str": "acoustic",
            "qualities": [0, 1, 0, 0, 0, 0, 0, 0, 1, 0],
            "pitch": 60,
            "instrument_str": "keyboard_acoustic_004",
            "instrument": 327,
            "velocity": 25,
        },
        "organ_electronic_001-060-127": {
            "note_str": "organ_electronic_001-060-127",
            "sample_rate": 16000,
            "qualities_str": [],
            "instrument_source": 1,
            "instrument_family_str": "organ",
            "instrument_family": 6,
            "note": 248525,
            "instrument_source_str": "electronic",
            "qualities": [0] * 10,
            "pitch": 60,
            "instrument_str": "organ_electronic_001",
            "instrument": 8,
            "velocity": 127,
        },
        "bass_synthetic_033-022-050": {"note_str": "bass_synthetic_033-022-050", "pitch": 22, "velocity": 50},
    }
    src = _write(tmp_path / "nsynth-valid" / "examples.json", json.dumps(examples))
    counts, clips, _ = _run(tmp_path, "nsynth", src)
    assert counts == {"rows": 2, "skipped": 1, "reasons": {"missing 'instrument_family_str'": 1}}
    clip = clips["keyboard_acoustic_004-060-025"]
    assert clip.split == "val"
    assert clip.labels == {
        "instrument_family": "keyboard",
        "instrument_source": "acoustic",
        "pitch": 60,
        "velocity": 25,
    }
    assert clip.tags == ["dark", "reverb"]
    assert _audio(clip) == str(tmp_path / "nsynth-valid" / "audio" / "keyboard_acoustic_004-060-025.wav")
    assert _run(tmp_path, "nsynth", tmp_path / "nsynth-valid")[0]["rows"] == 2  # the folder works too


def test_openmic_multilabel(tmp_path):
    root = tmp_path / "openmic-2018"
    _write(
        root / "openmic-2018-aggregated-labels.csv",
        """sample_key,instrument,relevance,num_responses
000046_3840,accordion,0.0,3
000046_3840,voice,0.8,3
000046_3840,guitar,0.5,2
000135_483840,piano,0.9,3
000139_119040,trumpet,0.17,3
000999_0,drums,1.0,3
""",
    )
    _write(root / "partitions" / "split01_train.csv", "000046_3840\n000135_483840\n")
    _write(root / "partitions" / "split01_test.csv", "000139_119040\n")
    counts, clips, raw = _run(tmp_path, "openmic", root)
    assert counts == {"rows": 3, "skipped": 1, "reasons": {"not in the split01 partitions": 1}}
    clip = clips["000046_3840"]
    assert clip.split == "train" and clips["000139_119040"].split == "test"
    assert clip.labels == {"instruments": ["guitar", "voice"]} and clip.tags == ["guitar", "voice"]
    assert clips["000139_119040"].labels == {"instruments": []}
    assert raw[0]["meta"]["relevance"] == {"accordion": 0.0, "guitar": 0.5, "voice": 0.8}
    assert _audio(clip) == str(root / "audio" / "000" / "000046_3840.ogg")


FMA_TRACKS = """,album,album,artist,set,set,track,track
,title,tracks,name,split,subset,genre_top,title
track_id,,,,,,,
2,AWOL - A Way Of Life,7,AWOL,training,small,Hip-Hop,Food
5,AWOL - A Way Of Life,7,AWOL,validation,small,Hip-Hop,This World
140,Constant Hitmaker,2,Alec K. Redfearn,test,medium,Folk,Queen Of The Wires
155,Troubled Hearts,1,Unknown,training,large,,Untitled
"""


def test_fma_two_row_header(tmp_path):
    src = _write(tmp_path / "fma_metadata" / "tracks.csv", FMA_TRACKS)
    counts, clips, _ = _run(tmp_path, "fma", src)
    assert counts == {"rows": 3, "skipped": 1, "reasons": {"empty track/genre_top": 1}}
    food = clips["000002"]
    assert food.split == "train" and clips["000005"].split == "val" and clips["000140"].split == "test"
    assert food.labels == {"genre_top": "Hip-Hop"} and food.tags == ["Hip-Hop"]
    assert _audio(clips["000140"]) == str(tmp_path / "fma_large" / "000" / "000140.mp3")
    counts, clips, _ = _run(tmp_path, "fma", tmp_path / "fma_metadata", subset="small")
    assert sorted(clips) == ["000002", "000005"] and counts["reasons"]["not in the small subset"] == 2
    assert _audio(clips["000002"]) == str(tmp_path / "fma_small" / "000" / "000002.mp3")


def test_manifest_round_trip(tmp_path):
    src = _write(tmp_path / "musiccaps-public.csv", MUSICCAPS)
    out = tmp_path / "m.jsonl"
    convert("musiccaps", src, str(out))
    first = read_manifest(str(out))
    again = tmp_path / "sub" / "again.jsonl"
    again.parent.mkdir()
    write_manifest(str(again), [dataclasses.asdict(c) for c in first])
    assert read_manifest(str(again)) == first


def test_skips_are_counted_by_reason(tmp_path):
    header = MUSICCAPS.splitlines()[0]
    src = _write(
        tmp_path / "musiccaps-public.csv",
        header
        + """
-1LrH01Ei1w,0,10,/m/04rlf,['a'],A song.,1,False,True
,0,10,/m/04rlf,['a'],A song without an id.,1,False,True
-2LrH01Ei1w,x,10,/m/04rlf,['a'],A song.,1,False,True
-3LrH01Ei1w,0,10,/m/04rlf,['a'],A song.,1,False,maybe
-4LrH01Ei1w,0,10,/m/04rlf,['a'],  ,1,False,False
-5LrH01Ei1w,0,10,/m/04rlf,['a'],"",1,False,False
""",
    )
    counts = convert("musiccaps", src, str(tmp_path / "m.jsonl"))
    assert counts == {
        "rows": 1,
        "skipped": 5,
        "reasons": {"empty caption": 2, "empty ytid": 1, "invalid is_audioset_eval": 1, "invalid start_s/end_s": 1},
    }
    assert [c.id for c in read_manifest(str(tmp_path / "m.jsonl"))] == ["-1LrH01Ei1w"]


def test_missing_column_names_column_and_file(tmp_path):
    src = _write(
        tmp_path / "musiccaps-public.csv", "ytid,start_s,end_s,aspect_list,is_audioset_eval\nabc,0,10,[],True\n"
    )
    with pytest.raises(ManifestError, match=r"musiccaps-public\.csv:1: missing required column 'caption'"):
        convert("musiccaps", src, str(tmp_path / "m.jsonl"))
    src = _write(tmp_path / "train.csv", "video_id,start,end\nabc,0,10\n")
    with pytest.raises(ManifestError, match=r"train\.csv:1: missing required column 'text or caption'"):
        convert("youtube8m-musictextclips", src, str(tmp_path / "m.jsonl"))
    assert not (tmp_path / "m.jsonl").exists()


def test_bad_json_names_file_and_line(tmp_path):
    src = _write(
        tmp_path / "music_instruct.json", '{"QA": [\n  {"ytid": "a", "question": "q"},\n  {"ytid": oops}\n]}\n'
    )
    with pytest.raises(ManifestError, match=r"music_instruct\.json:3: not valid JSON"):
        convert("musicinstruct", src, str(tmp_path / "m.jsonl"))
    src = _write(tmp_path / "lp_train.jsonl", json.dumps(LP_ROW) + "\n" + json.dumps(LP_ROW) + "\n{broken\n")
    with pytest.raises(ManifestError, match=r"lp_train\.jsonl:3: not valid JSON"):
        convert("lp-musiccaps", src, str(tmp_path / "m.jsonl"))
    src = _write(tmp_path / "wrong.json", json.dumps({"QA": [{"ytid": "a"}]}))
    with pytest.raises(ManifestError, match=r"wrong\.json: expected a JSON object with a 'data' list"):
        convert("wavcaps", src, str(tmp_path / "m.jsonl"))


def test_malformed_csv_and_arguments(tmp_path):
    src = _write(tmp_path / "val.csv", "audiocap_id,youtube_id,start_time,caption\n1,abc,0,A dog barks.\n2,abc,0\n")
    with pytest.raises(ManifestError, match=r"val\.csv:3: 3 fields where the header has 4"):
        convert("audiocaps", src, str(tmp_path / "m.jsonl"))
    with pytest.raises(ManifestError, match=r"missing\.csv: cannot open"):
        convert("audiocaps", str(tmp_path / "missing.csv"), str(tmp_path / "m.jsonl"))
    with pytest.raises(ValueError, match="unknown format 'nope'"):
        convert("nope", src, str(tmp_path / "m.jsonl"))
    with pytest.raises(ValueError, match="unknown option"):
        convert("audiocaps", src, str(tmp_path / "m.jsonl"), columns="caption_writing")
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        convert("audiocaps", src, str(tmp_path / "m.jsonl"), split="holdout")
    good = _write(tmp_path / "test.csv", "audiocap_id,youtube_id,start_time,caption\n1,abc,0,A dog barks.\n")
    with pytest.raises(ValueError, match=r"audio_pattern '\{ytid\}\.wav' names field 'ytid'"):
        convert("audiocaps", good, str(tmp_path / "m.jsonl"), audio_pattern="{ytid}.wav")


def test_classification_sets_carry_mints_table1_instruction_and_answer(tmp_path):
    # mint.txt:69-84: prompt per dataset, output {label}; verbatim, trailing ":" only for OpenMIC
    _, clips, _ = _run(tmp_path, "gtzan", _gtzan(tmp_path))
    assert clips["blues.00003"].qa == [{"instruction": "The genre of this music is", "answer": "blues"}]
    src = _write(tmp_path / "fma_metadata" / "tracks.csv", FMA_TRACKS)
    _, clips, _ = _run(tmp_path, "fma", src)
    assert clips["000002"].qa == [{"instruction": "The genre of this music is", "answer": "Hip-Hop"}]
    root = tmp_path / "openmic-2018"
    _write(root / "openmic-2018-aggregated-labels.csv", "sample_key,instrument,relevance,num_responses\n"
           "000046_3840,voice,0.8,3\n000046_3840,guitar,0.5,2\n000139_119040,trumpet,0.17,3\n")
    _write(root / "partitions" / "split01_train.csv", "000046_3840\n")
    _write(root / "partitions" / "split01_test.csv", "000139_119040\n")
    _, clips, _ = _run(tmp_path, "openmic", root)
    prompt = "Identify the instruments in this segment of music:"
    assert clips["000046_3840"].qa == [{"instruction": prompt, "answer": "guitar, voice"}]
    assert clips["000139_119040"].qa == [{"instruction": prompt, "answer": "none"}]
    nsynth = {"k": {"note_str": "k", "instrument_family_str": "synth_lead", "instrument_source_str": "synthetic",
                    "pitch": 60, "velocity": 100}}
    _, clips, _ = _run(tmp_path, "nsynth", _write(tmp_path / "nsynth-test" / "examples.json", json.dumps(nsynth)))
    assert clips["k"].qa == [{"instruction": "The most prominent instrument in this music is", "answer": "synth_lead"}]
    _, clips, _ = _run(tmp_path, "gtzan", _gtzan(tmp_path / "again"), mint_qa=False)
    assert clips["blues.00003"].qa == []


def test_caption_sets_get_mints_caption_instruction_on_request(tmp_path):
    src = _write(tmp_path / "clotho_captions_evaluation.csv",
                 "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\na.wav,one,two,three,four,five\n")
    assert _run(tmp_path, "clotho", src)[1]["a"].qa == []
    clip = _run(tmp_path, "clotho", src, mint_qa=True)[1]["a"]
    assert clip.qa[0] == {"instruction": "Generate audio caption:", "answer": "one"} and len(clip.qa) == 5
    with pytest.raises(ValueError, match="Table 1 has no template"):
        _run(tmp_path, "musiccaps", tmp_path / "clotho_captions_evaluation.csv", mint_qa=True)
