from bnorder.cli import app

app(prog_name="bnorder")
