"""Training the speech LM on real speech encoded by a random EnCodec, and serving what it learned."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from voxloop.codecs.encodec_stream import StreamingDecoder, random_encodec
from voxloop.voice.speech_lm import IGNORE_INDEX, SamplingSettings, SpeechLM
from voxloop.voice.train_native import (ConversationLayout, encode_pairs, latest_checkpoint, main, make_batch,
                                        read_pairs, train)

BANDWIDTH = 1.5  # the tiny config's 2 codebooks
SHORT_LAYOUT = ConversationLayout(lead_frames=4, gap_frames=6, tail_frames=6)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def codec():
    return random_encodec(seed=0, bandwidth=BANDWIDTH)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, codec, speech_pair):
    out_dir = tmp_path_factory.mktemp("trained")
    model_dir = train([speech_pair], out_dir, config_name="tiny", steps=150, lr=3e-3, batch_size=1, codec=codec,
                      layout=SHORT_LAYOUT, checkpoint_every=1000, show_progress=False)
    return out_dir, model_dir


def test_learns_one_reply_and_serves_it_through_the_stream(trained, codec, speech_pair):
    out_dir, model_dir = trained
    losses = torch.load(latest_checkpoint(out_dir) / "training_state.pt", weights_only=True)["losses"]
    assert losses[-1] < losses[0] / 100

    # The reference is encoded independently of training's cache.
    conversation = encode_pairs(read_pairs([speech_pair]), codec, BANDWIDTH, SHORT_LAYOUT)[0]
    reply = conversation.assistant[:, conversation.reply_start:conversation.reply_start + conversation.reply_frames]
    assert conversation.reply_frames == 38 and len(set(reply[0].tolist())) > 5  # real, varied speech codes

    model = SpeechLM.load(model_dir)
    stream = model.stream(SamplingSettings(temperature=0))
    user_frames = list(conversation.user.T)
    silence = conversation.user[:, -1]  # what the encoder keeps giving for a silent microphone
    generated = [out for frame in user_frames + [silence] * stream.delay_frames if (out := stream.step(frame)) is not None]
    generated = torch.stack(generated, dim=1)

    # Silence while the user speaks, then the reply, then silence. The last K-1 frames' finer
    # codebooks fall past the end of the delayed training sequence, so only those are left out.
    trained_frames = conversation.assistant.shape[-1] - stream.delay_frames
    assert trained_frames > conversation.reply_start + conversation.reply_frames
    assert torch.equal(generated[:, :trained_frames], conversation.assistant[:, :trained_frames])
    generated_reply = generated[:, conversation.reply_start:conversation.reply_start + conversation.reply_frames]
    assert torch.equal(generated_reply, reply)

    # Same tokens, same audio: what the server would play is the reference reply.
    generated_audio = StreamingDecoder(codec, BANDWIDTH).decode(generated_reply)
    reference_audio = StreamingDecoder(codec, BANDWIDTH).decode(reply)
    assert generated_audio.shape == (conversation.reply_frames * 320,)
    assert np.abs(reference_audio).max() > 0
    np.testing.assert_array_equal(generated_audio, reference_audio)


def test_loss_plot_and_final_model_are_written(trained):
    out_dir, model_dir = trained
    assert (out_dir / "loss.png").stat().st_size > 1000
    assert (out_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert model_dir == out_dir / "model"
    assert latest_checkpoint(out_dir).name == "step_0000150"


def test_resume_continues_the_step_counter(tmp_path, codec, speech_pair):
    common = dict(config_name="tiny", lr=2e-3, batch_size=2, codec=codec, layout=SHORT_LAYOUT,
                  checkpoint_every=3, show_progress=False)
    train([speech_pair], tmp_path, steps=6, **common)
    assert latest_checkpoint(tmp_path).name == "step_0000006"
    train([speech_pair], tmp_path, steps=9, resume=True, **common)
    state = torch.load(latest_checkpoint(tmp_path) / "training_state.pt", weights_only=True)
    assert latest_checkpoint(tmp_path).name == "step_0000009"
    assert state["step"] == 9 and len(state["losses"]) == 9
    assert (tmp_path / "loss.png").is_file()

    train([speech_pair], tmp_path, steps=3, resume=False, **common)  # starts over
    state = torch.load(latest_checkpoint(tmp_path) / "training_state.pt", weights_only=True)
    assert state["step"] == 3 and len(state["losses"]) == 3


def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, codec, speech_pair):
    common = dict(config_name="tiny", steps=6, lr=2e-3, batch_size=2, codec=codec, layout=SHORT_LAYOUT,
                  checkpoint_every=3, show_progress=False)
    train([speech_pair], tmp_path, **common)
    uninterrupted = load_file(str(tmp_path / "checkpoints" / "step_0000006" / "model.safetensors"))
    # As if the run had died after its step-3 checkpoint.
    shutil.rmtree(tmp_path / "checkpoints" / "step_0000006")
    shutil.rmtree(tmp_path / "model")
    train([speech_pair], tmp_path, resume=True, **common)
    resumed = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name


def test_resume_refuses_a_different_config(tmp_path, codec, speech_pair):
    train([speech_pair], tmp_path, steps=1, codec=codec, layout=SHORT_LAYOUT, show_progress=False)
    from voxloop.voice.speech_lm_config import config_by_name

    with pytest.raises(ValueError, match="different config"):
        train([speech_pair], tmp_path, steps=2, codec=codec, layout=SHORT_LAYOUT, show_progress=False,
              config=config_by_name("tiny").with_changes(n_layers=1))


def test_make_batch_pads_and_crops(codec, speech_pair):
    conversation = encode_pairs(read_pairs([speech_pair]), codec, BANDWIDTH, SHORT_LAYOUT)[0]
    length = conversation.user.shape[-1]
    generator = torch.Generator().manual_seed(0)
    user_in, assistant_in, targets = make_batch([conversation], [0, 0], 1024, max_steps=length, generator=generator)
    assert user_in.shape == assistant_in.shape == targets.shape == (2, 2, length)
    assert (assistant_in[:, :, 0] == 1024).all()  # the assistant stream starts from pad
    assert targets[0, 1, 0] == IGNORE_INDEX  # codebook 1 has nothing at step 0
    assert torch.equal(targets[0, 0], conversation.assistant[0])
    assert torch.equal(targets[0, 1, 1:], conversation.assistant[1, :-1])

    cropped = make_batch([conversation], [0], 1024, max_steps=20, generator=generator)
    assert cropped[0].shape == (1, 2, 20)


def test_read_pairs_from_tsv_and_folders(tmp_path, speech_pair):
    user, reply = speech_pair
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text(f"user\treply\n# a comment\n{user}\t{reply}\n")
    assert [(p.user, p.reply) for p in read_pairs(tsv)] == [(user, reply)]
    assert len(read_pairs(tmp_path)) == 1  # a directory holding pairs.tsv

    folders = tmp_path / "folders"
    for name in ("a", "b"):
        (folders / name).mkdir(parents=True)
        (folders / name / "user.wav").write_bytes(user.read_bytes())
        (folders / name / "reply.wav").write_bytes(reply.read_bytes())
    (folders / "not-a-pair").mkdir()
    assert [p.user.parent.name for p in read_pairs(folders)] == ["a", "b"]

    (tmp_path / "relative").mkdir()
    (tmp_path / "relative" / "pairs.tsv").write_text("../folders/a/user.wav\t../folders/a/reply.wav\n")
    assert read_pairs(tmp_path / "relative")[0].user.resolve() == (folders / "a" / "user.wav").resolve()

    (tmp_path / "broken.tsv").write_text(f"{user}\t{tmp_path / 'missing.wav'}\n")
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        read_pairs(tmp_path / "broken.tsv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\(user, reply\\) pairs"):
        read_pairs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        read_pairs(tmp_path / "does-not-exist")


def test_command_line_trains_with_a_local_codec_checkpoint(tmp_path, codec, speech_pair, capsys):
    checkpoint = tmp_path / "encodec.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in codec.state_dict().items()}, str(checkpoint))
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text(f"{speech_pair[0]}\t{speech_pair[1]}\n")
    main([str(tsv), str(tmp_path / "out"), "--steps", "2", "--batch-size", "1", "--checkpoint-every", "1",
          "--codec-checkpoint", str(checkpoint)])
    assert "speech LM saved to" in capsys.readouterr().out
    assert SpeechLM.load(tmp_path / "out" / "model").config.n_codebooks == 2
    assert latest_checkpoint(tmp_path / "out").name == "step_0000002"


def test_encoded_pairs_are_cached(tmp_path, codec, speech_pair):
    first = encode_pairs(read_pairs([speech_pair]), codec, BANDWIDTH, SHORT_LAYOUT, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    second = encode_pairs(read_pairs([speech_pair]), codec, BANDWIDTH, SHORT_LAYOUT, cache_dir=tmp_path)
    assert torch.equal(first[0].assistant, second[0].assistant) and second[0].reply_start == first[0].reply_start
    # Another layout or another codec is another entry, not a stale hit.
    encode_pairs(read_pairs([speech_pair]), codec, BANDWIDTH, ConversationLayout(lead_frames=0), cache_dir=tmp_path)
    encode_pairs(read_pairs([speech_pair]), random_encodec(seed=1, bandwidth=BANDWIDTH), BANDWIDTH, SHORT_LAYOUT, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
