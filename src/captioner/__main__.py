from captioner.cli import app

app()
