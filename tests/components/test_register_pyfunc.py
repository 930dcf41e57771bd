"""The registered pyfunc renders a request as training and evaluation rendered their records."""

import json

from mlflow.pyfunc import PythonModelContext

from tests.llm.ml.families import FAMILIES, build
from tuneline.llm.ml.chat import RENDER_KWARGS, render


def test_the_pyfunc_renders_the_prompt_training_rendered(tmp_path):
    # A full model of the Llama 3.x family: its template prints "Today Date: <strftime_now>" unless given
    # date_string, so a pyfunc rendering without the training's variables serves a prompt never trained on.
    model_dir = build(FAMILIES["llama3"], tmp_path / "model")
    summary = {"base_model": "tiny-llama3", "method": "full", "chat_template_kwargs": dict(RENDER_KWARGS)}
    (model_dir / "training_summary.json").write_text(json.dumps(summary))

    from components.register.pyfunc_model import TunelineChatModel

    served = TunelineChatModel()
    served.load_context(PythonModelContext(artifacts={"model": str(model_dir)}, model_config={}))
    messages = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Printer is jammed"}]
    text = served.render(messages)
    assert text == render(served.tokenizer, messages, generation_prompt=True)
    assert "Today Date: 26 Jul 2024" in text
